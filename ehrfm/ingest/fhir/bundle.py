"""The one-patient path (serving): a FHIR Bundle in, MEDS events + rejects + counts out, no Spark.

It runs exactly the per-record code of the Spark ETL (:func:`ehrfm.ingest.fhir.process.process_record`)
with the cross-record lookups (birth for the before-birth check, Medication for medicationReference)
built from the Bundle itself, the way the Spark path builds them with joins, then the same settling
rules (:func:`ehrfm.ingest.fhir.dedup.settle`: copies of a resource, records without a valid Patient).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ehrfm.ingest.deaths import count_after_death
from ehrfm.ingest.fhir import jsonio
from ehrfm.ingest.fhir.dedup import settle
from ehrfm.ingest.fhir.ids import subject_id_for
from ehrfm.ingest.fhir.mapper import MapContext, birth_floor
from ehrfm.ingest.fhir.process import Summary, process_record, summary_key
from ehrfm.ingest.fhir.records import Record, bundle_entry_records, iter_file_records
from ehrfm.ingest.fhir.rules import Rules, load_rules
from ehrfm.ingest.fhir.tables import events_table, rejects_table, sort_events
from ehrfm.ingest.fhir.versions import check_version

VALIDATE_CHOICES = ("auto", "none", "full")


@dataclass
class FhirResult:
    """Output of :func:`bundle_to_events`: ``events`` (EVENTS_SCHEMA, canonical order), ``rejects``
    (REJECTS_SCHEMA), ``summary`` (per resource type counts) and ``descriptions`` (code -> display)."""

    events: pa.Table
    rejects: pa.Table
    summary: Summary
    descriptions: dict[str, str] = field(default_factory=dict)

    def events_df(self) -> Any:
        """The events as a pandas DataFrame."""
        return self.events.to_pandas()


def lookups(records: Iterable[Record], rules: Rules) -> tuple[dict[int, int], dict[str, dict[str, Any]]]:
    """Birth floors (subject_id -> earliest plausible time, minimum over Patient records) and Medications
    (``Medication/<id>`` -> resource, first record wins): the same values the Spark path joins in."""
    births: dict[int, int] = {}
    meds: dict[str, dict[str, Any]] = {}
    for rec in records:
        if rec.error is not None:
            continue
        if rec.resource_type == "Patient" and rec.resource_id:
            floor = birth_floor(rec.resource or {}, rules)
            if floor is not None:
                sid = subject_id_for(rec.resource_id)
                births[sid] = min(floor, births.get(sid, floor))
        elif rec.resource_type == "Medication" and rec.resource_id:
            meds.setdefault(f"Medication/{rec.resource_id}", rec.resource or {})
    return births, meds


def bundle_to_events(
    bundle: dict[str, Any] | str | bytes,
    *,
    validate: str = "auto",
    source_file: str = "<bundle>",
    max_time_us: int | None = None,
    rules: Rules | None = None,
    anonymous_subjects: bool = False,
    fhir_version: str = "auto",
) -> FhirResult:
    """Map one FHIR Bundle (dict, JSON text or bytes, optionally gzip; NDJSON text works too).

    ``validate``: "full"/"auto" check each mapped-type resource against the FHIR R4B (or STU3) models
    first (at serving time a patient's few hundred resources validate in well under a second);
    "none" skips that. ``max_time_us`` overrides the far-future limit (default now + 1 day).
    Copies of a resource (same type and id) count once (:mod:`ehrfm.ingest.fhir.dedup`); records whose
    subject has no valid Patient in the Bundle are rejected, or kept with ``anonymous_subjects``.
    ``fhir_version``: ``auto`` (each resource validated in the version it is detected in) or the version
    every resource is validated in (docs/fhir_versions.md).
    Raises ``ValueError`` for a bad ``validate`` or ``fhir_version``, or a JSON value that is not a resource
    object.
    """
    if validate not in VALIDATE_CHOICES:
        raise ValueError(f"validate must be one of {VALIDATE_CHOICES}, got {validate!r}")
    fhir_version = check_version(fhir_version)
    rules = rules or load_rules()
    if isinstance(bundle, dict):
        if bundle.get("resourceType") == "Bundle":
            entries = bundle.get("entry") or []
            if not isinstance(entries, list):
                raise ValueError("Bundle.entry must be a list")
            records = list(bundle_entry_records(source_file, entries, copy=True))
        else:
            records = [Record(source_file, 0, resource=jsonio.loads(jsonio.dumps(bundle)))]
    elif isinstance(bundle, (str, bytes)):
        records = list(iter_file_records(source_file, bundle.encode() if isinstance(bundle, str) else bundle))
    else:
        raise ValueError(f"bundle must be a dict, str or bytes, got {type(bundle).__name__}")
    births, meds = lookups(records, rules)
    ctx = MapContext(rules=rules, birth_floor_us=births, medications=meds, fhir_version=fhir_version)
    if max_time_us is not None:
        ctx.max_time_us = max_time_us
    summary = Summary()
    events: list[dict[str, Any]] = []
    rejects: list[dict[str, Any]] = []
    outcomes = [process_record(rec, ctx, validate != "none") for rec in records]
    for rec, out in zip(records, settle(records, outcomes, rules, anonymous_subjects), strict=True):
        summary.add(summary_key(rec), out.status, len(out.events))
        events += out.events
        rejects += out.rejects
    table = sort_events(events_table(events))
    summary.after_death = count_after_death(table)
    return FhirResult(table, rejects_table(rejects), summary, ctx.descriptions)
