"""Copies of one resource across the whole input, and records whose subject has no valid Patient.

Both engines use these rules (the one-patient path directly, the Spark path per group of copies):

- **Copies**: records with the same ``(resourceType, id)``. One copy wins: the latest ``meta.lastUpdated``
  (a copy that has one beats a copy that has none), then the last in (file path, record index) order.
  A copy whose content (everything but ``meta``) equals the winner's is a ``duplicate``, counted and not
  mapped again; any other copy is a conflicting version and becomes a reject naming the winner's location.
- **Subjects**: a mapped record whose subject has no mapped Patient (the Patient was rejected, or is not
  in the input) becomes a reject whose reason starts with :data:`ORPHAN_PREFIX`, unless the caller keeps
  such records as an anonymous subject.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ehrfm.ingest.fhir.mapper import subject_of
from ehrfm.ingest.fhir.process import DUPLICATE, MAPPED, REJECTED, Outcome
from ehrfm.ingest.fhir.records import Record
from ehrfm.ingest.fhir.rules import Rules, first_path
from ehrfm.ingest.fhir.times import TimeParseError, parse_fhir_time

try:
    import orjson

    def _canonical(obj: Any) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)

except ImportError:  # pragma: no cover - exercised where orjson is absent
    import json

    def _canonical(obj: Any) -> bytes:
        return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


ORPHAN_PREFIX = "subject's Patient rejected: "
NO_PATIENT = "no Patient with this id in the input"


@dataclass(frozen=True)
class Copy:
    """One copy of a resource: where it is, its ``meta.lastUpdated`` (microseconds, ``None`` when absent
    or unparseable) and the digest of its content without ``meta``."""

    source_file: str
    record_index: int
    updated_us: int | None
    digest: str


class Decision(NamedTuple):
    """What becomes of a losing copy: ``status`` (duplicate / rejected), reject ``field`` and ``reason``."""

    status: str
    field: str | None
    reason: str | None


def last_updated(resource: dict[str, Any]) -> int | None:
    """``meta.lastUpdated`` in microseconds, ``None`` when absent or not a FHIR instant."""
    meta = resource.get("meta")
    value = meta.get("lastUpdated") if isinstance(meta, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return parse_fhir_time(value)
    except TimeParseError:
        return None


def content_digest(resource: dict[str, Any]) -> str:
    """Digest of a resource's content, ``meta`` excluded (versionId / lastUpdated / tags differ between
    exports of the same content), keys sorted so that key order does not matter."""
    body = {k: v for k, v in resource.items() if k != "meta"} if "meta" in resource else resource
    return hashlib.blake2b(_canonical(body), digest_size=16).hexdigest()


def copy_of(source_file: str, record_index: int, resource: dict[str, Any]) -> Copy:
    """The :class:`Copy` of one record's resource."""
    return Copy(source_file, record_index, last_updated(resource), content_digest(resource))


def _rank(c: Copy) -> tuple[bool, int, str, int]:
    return (c.updated_us is not None, c.updated_us or 0, c.source_file, c.record_index)


def resolve(copies: Sequence[Copy]) -> dict[tuple[str, int], Decision]:
    """Decisions for the losing copies of one ``(resourceType, id)``, keyed by (source_file, record_index);
    the winner (and a resource with one copy) has none."""
    if len(copies) < 2:
        return {}
    winner = max(copies, key=_rank)
    where = f"{winner.source_file}#{winner.record_index}"
    out: dict[tuple[str, int], Decision] = {}
    for c in copies:
        if c is winner:
            continue
        if c.digest == winner.digest:
            out[(c.source_file, c.record_index)] = Decision(DUPLICATE, None, None)
        elif winner.updated_us is not None and (c.updated_us is None or c.updated_us < winner.updated_us):
            out[(c.source_file, c.record_index)] = Decision(
                "rejected", "meta.lastUpdated",
                f"conflicting version: superseded by the copy at {where} (later meta.lastUpdated)")
        else:
            out[(c.source_file, c.record_index)] = Decision(
                "rejected", "id", f"conflicting version: superseded by the copy at {where} (later in path "
                "order; meta.lastUpdated does not decide)")
    return out


def resolve_all(keyed: Iterable[tuple[tuple[str, str], Copy]]) -> dict[tuple[str, int], Decision]:
    """:func:`resolve` over every ``((resourceType, id), copy)`` of an input."""
    groups: dict[tuple[str, str], list[Copy]] = {}
    for key, c in keyed:
        groups.setdefault(key, []).append(c)
    out: dict[tuple[str, int], Decision] = {}
    for copies in groups.values():
        out.update(resolve(copies))
    return out


def orphan_reason(patient_reason: str | None) -> str:
    """The reject reason of a record whose subject has no mapped Patient: the Patient's own reject reason,
    or :data:`NO_PATIENT` when no Patient record has the subject's id."""
    return ORPHAN_PREFIX + (patient_reason or NO_PATIENT)


def settle(records: Sequence[Record], outcomes: list[Outcome], rules: Rules,
           anonymous_subjects: bool = False) -> list[Outcome]:
    """The final outcome of every record of an input held in memory (the one-patient path): copies
    resolved (:func:`resolve`), then records of subjects without a mapped Patient rejected (unless
    ``anonymous_subjects``). ``outcomes[i]`` is :func:`~ehrfm.ingest.fhir.process.process_record` of
    ``records[i]``; the Spark path applies the same rules with joins (:mod:`ehrfm.ingest.fhir.spark_settle`).
    """
    decisions = resolve_all(
        ((r.resource_type, r.resource_id), copy_of(r.source_file, r.record_index, r.resource))
        for r in records if r.resource is not None and r.resource_type and r.resource_id)
    final: list[Outcome] = []
    for rec, out in zip(records, outcomes, strict=True):
        d = decisions.get((rec.source_file, rec.record_index))
        if d is None:
            final.append(out)
        elif d.status == DUPLICATE:
            final.append(Outcome(DUPLICATE))
        else:
            final.append(Outcome(REJECTED, rejects=[_reject(rec, d.field, d.reason or "")]))
    if anonymous_subjects:
        return final
    valid: set[int] = set()
    why: dict[int, str] = {}
    for rec, out in zip(records, final, strict=True):
        if rec.resource_type == "Patient" and rec.resource is not None:
            sid = subject_of(rec.resource, rules)
            if sid is not None and out.status == MAPPED:
                valid.add(sid)
            elif sid is not None and out.status == REJECTED and out.rejects:
                reason = out.rejects[0]["reason"]
                why[sid] = min(reason, why.get(sid, reason))
    for i, (rec, out) in enumerate(zip(records, final, strict=True)):
        if out.status != MAPPED or rec.resource_type == "Patient" or rec.resource is None:
            continue
        sid = out.events[0]["subject_id"] if out.events else None
        if sid is None or sid not in valid:
            field, _ = first_path(rec.resource, rules.subject_fields)
            reason = orphan_reason(why.get(sid) if sid is not None else None)
            final[i] = Outcome(REJECTED, rejects=[_reject(rec, field, reason)])
    return final


def _reject(rec: Record, field: str | None, reason: str) -> dict[str, Any]:
    return {"source_file": rec.source_file, "record_index": rec.record_index,
            "resource_type": rec.resource_type, "resource_id": rec.resource_id, "field": field,
            "reason": reason}
