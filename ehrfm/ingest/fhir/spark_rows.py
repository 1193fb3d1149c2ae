"""The per-file and per-partition Python functions the Spark path runs on executors (no Spark import:
they are plain generators of tuples, testable without a session).

Every row has the columns of :data:`ROW_SCHEMA`; ``kind`` says which are used:

====  ======================================================================================
E     an event (EVENTS_SCHEMA columns; ``time`` as int microseconds) and its record's ``source_file``,
      ``record_index``; the tuple stops there (:func:`event_row`: the columns after it are null, and
      :func:`to_batch` makes them without a Python object per cell)
R     a reject (REJECTS_SCHEMA columns; ``reason`` holds the reason)
K     one per record, its outcome before settling (:mod:`ehrfm.ingest.fhir.spark_settle`): location,
      ``resource_type`` (or ``<unreadable>``), ``resource_id``, ``status``, ``n_events``, ``subject_id``
      (mapped records and Patients), ``field`` / ``reason`` (a reject's first; for a mapped record, its
      subject field), ``updated`` (meta.lastUpdated) and ``digest`` (content, only with a type and an id)
D     a code description (``code``, ``text_value`` = description)
V     "auto" validation sample: ``status`` valid/invalid, ``reason``
P     a record whose mapping needs lookups from other files: ``payload`` JSON + join keys
B     a birth floor (``subject_id``, ``floor``)
M     a Medication lookup target (``med_key``, ``payload``)
I     a subject id and its source id (``subject_id``, ``patient_ref``)
====  ======================================================================================
"""

from __future__ import annotations

import gc
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

import pyarrow as pa

from ehrfm.gcstate import shared_setting
from ehrfm.ingest.fhir import jsonio
from ehrfm.ingest.fhir.dedup import content_digest, last_updated
from ehrfm.ingest.fhir.mapper import NOT_COMPUTED, MapContext, reference_id, subject_and_ref, subject_of
from ehrfm.ingest.fhir.process import MAPPED, REJECTED, Outcome, process_record, summary_key
from ehrfm.ingest.fhir.records import Record
from ehrfm.ingest.fhir.rules import Rules, first_path, load_rules
from ehrfm.ingest.fhir.validate import validate_resource

ROW_SCHEMA = (
    "kind string, subject_id long, time long, code string, numeric_value float, text_value string, "
    "encounter_id string, unit string, source string, source_file string, record_index long, "
    "resource_type string, resource_id string, field string, reason string, status string, n_events long, "
    "floor long, med_key string, payload string, patient_ref string, updated long, digest string"
)
_COLUMNS = [c.strip().split(" ")[0] for c in ROW_SCHEMA.split(",")]
_ARROW_TYPES = {"string": pa.string(), "long": pa.int64(), "float": pa.float32()}


def arrow_schema(ddl: str) -> pa.Schema:
    """The Arrow schema of a Spark DDL string of ``name type`` pairs (string, long, float)."""
    return pa.schema([(c.strip().split(" ")[0], _ARROW_TYPES[c.strip().split(" ")[1]])
                      for c in ddl.split(",")])


ARROW_SCHEMA = arrow_schema(ROW_SCHEMA)
_INDEX = {c: i for i, c in enumerate(_COLUMNS)}
_MED_TYPES = ("MedicationRequest", "MedicationAdministration", "MedicationStatement")


def row(kind: str, **values: Any) -> tuple[Any, ...]:
    """A ROW_SCHEMA tuple with ``kind`` and the given columns set (others null)."""
    out: list[Any] = [None] * len(_COLUMNS)
    out[0] = kind
    for k, v in values.items():
        out[_INDEX[k]] = v
    return tuple(out)


def sampled(source_file: str, index: int, every: int, file_crc: int | None = None) -> bool:
    """Deterministic 1-in-``every`` sample of records (crc32 of the location ``source_file#index``).

    ``file_crc``: ``zlib.crc32(source_file.encode())`` when the caller has it (once per file): crc32 runs
    on, so the location's crc is the file's continued over ``#index`` (the same answer, a shorter string
    per record)."""
    if every <= 0:
        return False
    base = zlib.crc32(source_file.encode()) if file_crc is None else file_crc
    return zlib.crc32(f"#{index}".encode(), base) % every == 0


def to_batch(rows: list[tuple[Any, ...]], schema: pa.Schema = ARROW_SCHEMA) -> pa.RecordBatch:
    """Tuples of ``schema`` (default ROW_SCHEMA) -> one Arrow record batch (what ``mapInArrow`` hands
    back to Spark)."""
    n, width = len(rows), len(schema)
    if rows and len(set(map(len, rows))) > 1:  # short rows (E) mixed with full ones: pad the short
        rows = [r + (None,) * (width - len(r)) for r in rows]
    columns = list(zip(*rows, strict=True)) if rows else [()] * width
    # a short row's missing tail is null; a column of nulls only (most of ROW_SCHEMA for a batch of one
    # kind of row) is made without converting n Python objects; tuple.count runs in C
    columns += [()] * (width - len(columns))
    return pa.RecordBatch.from_arrays([pa.nulls(n, f.type) if n and (not col or col.count(None) == n)
                                       else pa.array(col, type=f.type)
                                       for col, f in zip(columns, schema, strict=True)],
                                      schema=schema)


def event_row(e: Mapping[str, Any], source_file: str, record_index: int) -> tuple[Any, ...]:
    """The ``E`` row of one event: ``row("E", **e, source_file=..., record_index=...)`` built positionally
    and cut after ``record_index`` (one per event, the most frequent row: its 12 null columns are neither
    built here nor transposed by :func:`to_batch`)."""
    return ("E", e["subject_id"], e["time"], e["code"], e["numeric_value"], e["text_value"],
            e["encounter_id"], e["unit"], e["source"], source_file, record_index)


def outcome_row(rec: Record, out: Outcome, rules: Rules, sid: int | None = NOT_COMPUTED) -> tuple[Any, ...]:
    """The ``K`` row of one record's outcome (see the module doc). ``sid``: the record's
    :func:`~ehrfm.ingest.fhir.mapper.subject_of` when the caller has it."""
    res, rtype, rid = rec.resource, rec.resource_type, rec.resource_id
    field = reason = updated = digest = None
    subject = None
    if out.rejects:
        field, reason = out.rejects[0]["field"], out.rejects[0]["reason"]
    if res is not None and rtype and rid:
        # what dedup.copy_of would hold, without building the Copy
        updated, digest = last_updated(res), content_digest(res)
        if rtype == "Patient":
            subject = subject_of(res, rules) if sid is NOT_COMPUTED else sid
    if out.status == MAPPED and out.events:
        subject = out.events[0]["subject_id"]
        if rtype != "Patient" and res is not None:
            field = first_path(res, rules.subject_fields)[0]
    # positional twin of row("K", ...): source_file, record_index, resource_type, resource_id, field, reason,
    # status, n_events at 9..16, subject_id at 1, updated and digest last
    return ("K", subject, None, None, None, None, None, None, None, rec.source_file, rec.record_index,
            summary_key(rec), rid, field, reason, out.status, len(out.events), None, None, None, None,
            updated, digest)


def _outcome_rows(rec: Record, res: dict[str, Any] | None, out: Outcome, ctx: MapContext, validate: str,
                  every: int, sid: int | None = NOT_COMPUTED,
                  file_crc: int | None = None) -> list[tuple[Any, ...]]:
    # a list, not a generator: one per record, and the caller's ``yield from`` walks a list in C
    rules = ctx.rules
    out_rows: list[tuple[Any, ...]] = []
    if validate == "auto" and res is not None and rec.error is None:
        if out.status == REJECTED and out.rejects:
            # the validator usually names the root cause of what the mapper tripped on
            problem = validate_resource(res, rules, ctx.fhir_version)
            if problem is not None:
                out.rejects[0]["reason"] += f"; FHIR validation: {problem[1]}"
                out.rejects[0]["field"] = out.rejects[0]["field"] or problem[0]
        elif out.status == MAPPED and sampled(rec.source_file, rec.record_index, every, file_crc):
            problem = validate_resource(res, rules, ctx.fhir_version)
            out_rows.append(row("V", source_file=rec.source_file, record_index=rec.record_index,
                                resource_type=rec.resource_type, resource_id=rec.resource_id,
                                field=problem[0] if problem else None, reason=problem[1] if problem else None,
                                status="invalid" if problem else "valid"))
    out_rows.append(outcome_row(rec, out, rules, sid))
    source_file, record_index = rec.source_file, rec.record_index
    out_rows += [event_row(e, source_file, record_index) for e in out.events]
    out_rows += [row("R", **r) for r in out.rejects]
    return out_rows


def _med_key(res: dict[str, Any]) -> str | None:
    ref = res.get("medicationReference") or (res.get("medication") or {}).get("reference")
    target = ref.get("reference") if isinstance(ref, dict) else None
    if isinstance(target, str) and not target.startswith("#"):
        return f"Medication/{reference_id(target)}"
    return None


GC_YOUNG_THRESHOLD = 100_000  # allocations between young collections while rows are mapped (default 700)


def _widen_young_gc() -> tuple[int, ...]:
    saved = gc.get_threshold()
    gc.set_threshold(max(saved[0], GC_YOUNG_THRESHOLD), *saved[1:])
    return saved


_young_gc_widened = shared_setting(_widen_young_gc, lambda saved: gc.set_threshold(*saved))


def young_gc_widened() -> AbstractContextManager[None]:
    """Collect the young generation every :data:`GC_YOUNG_THRESHOLD` allocations instead of every 700 while
    the block runs (re-entrant and thread-safe: the last one out restores the thresholds the first one in
    found; :func:`ehrfm.gcstate.shared_setting`).

    Why: mapping allocates ~30 dicts, lists and tuples per record and keeps a batch of row tuples alive
    until it becomes Arrow; with the default thresholds the collector walks them over and over: measured
    ~15% of the per-record time (1,000 patients, one process: 16.4 -> 13.9 µs). Unlike a paused collector
    (the serving path's ``gc_paused``), cycles (a rare exception's traceback) are still collected, so a
    long unit's memory stays bounded.
    """
    return _young_gc_widened()


def map_records(path: str, records: Iterable[Record], births: Mapping[int, int],
                meds: Mapping[str, dict[str, Any]],
                complete: bool, validate: str, max_time_us: int, every: int,
                fhir_version: str = "auto") -> Iterator[tuple[Any, ...]]:
    """Map the records of one file (or byte range): E/R/K/D/V rows and I rows, plus P rows for
    the records that must wait for the cross-file join (only when ``complete`` is false).

    ``births`` / ``meds``: the lookups known here. With ``complete`` they are all there are, so every
    outcome is final. Otherwise a record mapped with these birth floors is still final: the global
    floor (minimum over all Patient records of the subject) can only be lower, so the check it passed
    still passes; records the mapper rejects, or that lack the birth or Medication, wait for pass 2.
    ``fhir_version``: the version resources are validated in (``auto``: detected per resource).
    The young-generation collector is widened while the rows are made and consumed (:func:`young_gc_widened`).
    """
    with young_gc_widened():
        rules = load_rules()
        ctx = MapContext(rules=rules, birth_floor_us=births, medications=meds, max_time_us=max_time_us,
                         fhir_version=fhir_version)
        seen: set[tuple[int, str]] = set()
        full = validate == "full"
        path_crc = zlib.crc32(path.encode())  # the validation sample's crc, continued per record (sampled)
        mapped_types = rules.resources  # classify(rtype) == MAP, without the call
        for rec in records:
            res = rec.resource if rec.error is None else None
            rtype = rec.resource_type
            if res is None or rtype is None or rtype not in mapped_types:
                yield from _outcome_rows(rec, res, process_record(rec, ctx, full), ctx, validate, every)
                continue
            # once per record: the mapper and the K row reuse the subject; pref is the Patient id it came from
            sid, pref = subject_and_ref(res, rules)
            if sid is not None and pref and (sid, pref) not in seen:
                seen.add((sid, pref))
                yield row("I", subject_id=sid, patient_ref=pref)
            med_key = _med_key(res) if rtype in _MED_TYPES else None
            if complete or (sid is not None and sid in births and (med_key is None or med_key in meds)):
                out = process_record(rec, ctx, full, sid)
                if complete or out.status != REJECTED:
                    yield from _outcome_rows(rec, res, out, ctx, validate, every, sid,
                                             path_crc if rec.source_file == path else None)
                    continue
            yield row("P", source_file=path, record_index=rec.record_index, subject_id=sid, med_key=med_key,
                      payload=jsonio.dumps(res))
        for code, desc in ctx.descriptions.items():
            yield row("D", code=code, text_value=desc)


def pending_rows(rows: Iterable[Any], validate: str, max_time_us: int,
                 every: int, fhir_version: str = "auto") -> Iterator[tuple[Any, ...]]:
    """Pass 2 on one partition: P rows joined with the global birth floor (``floor``) and Medication
    (``med_payload``) -> E/R/K/D/V rows (young collector widened, as in :func:`map_records`)."""
    with young_gc_widened():
        rules = load_rules()
        ctx = MapContext(rules=rules, max_time_us=max_time_us, fhir_version=fhir_version)
        for r in rows:
            res = jsonio.loads(r["payload"])
            rec = Record(r["source_file"], r["record_index"], resource=res)
            ctx.birth_floor_us = {r["subject_id"]: r["floor"]} if r["floor"] is not None else {}
            ctx.medications = ({r["med_key"]: jsonio.loads(r["med_payload"])} if r["med_payload"] is not None
                               else {})
            out = process_record(rec, ctx, validate == "full")
            yield from _outcome_rows(rec, res, out, ctx, validate, every)
        for code, desc in ctx.descriptions.items():
            yield row("D", code=code, text_value=desc)
