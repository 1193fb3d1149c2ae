"""Process-wide garbage-collector settings held while blocks of work run, shared by every block.

Ingest widens the young generation while it maps records
(:func:`ehrfm.ingest.fhir.spark_rows.young_gc_widened`), serving pauses the collector during a request
(:func:`ehrfm.serve.core.gc_paused`). Both change interpreter-wide state from code that may nest or run on
several threads at once, so both need the same rule: the first block in saves the state and applies the
change, the last one out restores what the first one found.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any


def shared_setting(apply: Callable[[], Any], restore: Callable[[Any], None]
                   ) -> Callable[[], AbstractContextManager[None]]:
    """A re-entrant, thread-safe context manager factory: ``apply()`` runs when the first user enters (its
    return value is the saved state), ``restore(saved)`` when the last one leaves, errors included."""
    lock = threading.Lock()
    state: dict[str, Any] = {"users": 0, "saved": None}

    @contextmanager
    def held() -> Iterator[None]:
        with lock:
            if state["users"] == 0:
                state["saved"] = apply()
            state["users"] += 1
        try:
            yield
        finally:
            with lock:
                state["users"] -= 1
                if state["users"] == 0:
                    restore(state["saved"])

    return held
