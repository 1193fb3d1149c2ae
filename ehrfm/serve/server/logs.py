"""Structured server logs: one JSON object per line, from whitelisted fields only.

Every record carries ``ts`` (UTC, with offset), ``level``, ``logger`` and ``msg`` plus the ``fields`` passed
with ``extra={"fields": {...}}`` — request id, route, status, sizes, timings, outcome codes. Request content
never enters a record: the front does not parse bodies, and workers log nothing (their standard streams
are closed; what they report back holds only counts and codes). Uvicorn's access log is off (its lines hold
the query string); its own messages pass through this formatter.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from typing import Any, TextIO

import orjson

LOGGER = "ehrfm.serve"


class JsonFormatter(logging.Formatter):
    """``logging.Formatter`` writing JSON lines (exceptions reduced to their type: messages can quote
    data)."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line."""
        out: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update(fields)
        if record.exc_info and record.exc_info[0] is not None:
            out["error"] = record.exc_info[0].__name__
        return orjson.dumps(out, default=str).decode()


def setup(log_file: str | None = None) -> None:
    """Configure the ``ehrfm.serve`` and ``uvicorn`` loggers (run uvicorn with ``log_config=None``)."""
    stream: TextIO = open(log_file, "a", buffering=1) if log_file else sys.stderr  # noqa: SIM115
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    for name in (LOGGER, "uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = [handler]
        lg.setLevel(logging.INFO)
        lg.propagate = False
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.disabled = True
