"""Subject ids for FHIR patients: one function, used by the Spark ETL and at serving time alike."""

from __future__ import annotations

import hashlib
from functools import lru_cache

_MAX_INT64 = 2**63


@lru_cache(maxsize=65536)
def subject_id_for(patient_logical_id: str) -> int:
    """The int64 ``subject_id`` of a FHIR Patient logical id (docs/CONVENTIONS.md, "Subject ids").

    ``int(id)`` when the id is a plain decimal integer below 2**63; otherwise the first 8 bytes of
    ``blake2b(id)`` read as an unsigned big-endian integer and shifted right by one bit, so the result
    is always a non-negative int64. Deterministic across processes and machines (no ``hash()``).
    """
    if not isinstance(patient_logical_id, str) or not patient_logical_id:
        raise ValueError(f"Patient logical id must be a non-empty string, got {patient_logical_id!r}")
    if patient_logical_id.isascii() and patient_logical_id.isdigit():
        value = int(patient_logical_id)
        if value < _MAX_INT64:
            return value
    digest = hashlib.blake2b(patient_logical_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big", signed=False) >> 1
