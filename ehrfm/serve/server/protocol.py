"""What the front process and a scoring worker send each other over their pipe (picklable, small).

The front never parses request content: it reads the body (bounded), wraps it in a :class:`Job` and gets a
:class:`Reply` with the finished response body. ``Reply.meta`` holds only counts, timings and codes: it is
what the front logs, so nothing from a patient's record may go into it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

READY, FAILED = "ready", "failed"
ENDPOINTS = ("invocations", "fhir_risk", "cds")


@dataclass
class Job:
    """One request for a worker: ``endpoint`` in :data:`ENDPOINTS`, the raw body, and query parameters."""

    request_id: str
    endpoint: str
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    base_url: str = ""
    """The server's own base URL as the client reached it (for links in CDS cards)."""


@dataclass
class Reply:
    """A finished response: status, media type, body bytes; ``meta`` = loggable facts (no content);
    ``resources`` = RiskAssessments by id (the front keeps them for ``GET /fhir/RiskAssessment/<id>``)."""

    status: int
    media_type: str
    body: bytes
    meta: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, bytes] = field(default_factory=dict)


@dataclass
class WorkerInfo:
    """Sent once by a worker after the model loaded."""

    pid: int
    model_name: str
    backbone: str
    tasks: list[str]
    kinds: dict[str, str]
    max_len: int
    model_version: str
    strict: bool
    limits: dict[str, Any]
