"""One record -> its outcome (mapped / rejected / skipped), and the reconciling summary.

Both engines (Spark and the one-patient path) call :func:`process_record`, so the decision for a
record is made by one piece of code; copies of a resource and records without a valid Patient are settled
afterwards (:mod:`ehrfm.ingest.fhir.dedup`). Reconciliation per resource type:
``in = mapped + rejected + skipped + duplicate``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ehrfm.ingest.fhir.mapper import NOT_COMPUTED, Event, MapContext, Reject, make_reject, map_resource
from ehrfm.ingest.fhir.records import Record
from ehrfm.ingest.fhir.rules import Rules
from ehrfm.ingest.fhir.validate import is_known_type, validate_resource

UNREADABLE = "<unreadable>"  # summary key for records whose resourceType could not be read
MAPPED, REJECTED, SKIPPED, DUPLICATE = "mapped", "rejected", "skipped", "duplicate"
MAP, UNKNOWN = "map", "unknown"


@dataclass
class Outcome:
    """What became of one input record."""

    status: str
    events: list[Event] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)


def classify(resource_type: str, rules: Rules) -> str:
    """``"map"`` (a rule exists), ``"skipped"`` (a FHIR type we do not map, by design) or ``"unknown"``."""
    if resource_type in rules.resources:
        return MAP
    return SKIPPED if is_known_type(resource_type) else UNKNOWN


def process_record(rec: Record, ctx: MapContext, validate: bool, sid: int | None = NOT_COMPUTED) -> Outcome:
    """Map, reject or skip one record. ``validate``: check the resource against the FHIR models first.
    ``sid``: the resource's subject when the caller already computed it (see :func:`map_resource`)."""
    ctx.source_file, ctx.record_index = rec.source_file, rec.record_index
    rtype, rid = rec.resource_type, rec.resource_id
    if rec.error is not None:
        return Outcome(REJECTED, rejects=[make_reject(ctx, rtype, rid, rec.field, rec.error)])
    res = rec.resource or {}
    raw_type = res.get("resourceType")
    if not isinstance(raw_type, str) or not raw_type:
        return Outcome(REJECTED,
                       rejects=[make_reject(ctx, None, rid, "resourceType", "missing resourceType")])
    # a mapped type (most records) without the classify call
    kind = MAP if raw_type in ctx.rules.resources else classify(raw_type, ctx.rules)
    if kind == SKIPPED:
        return Outcome(SKIPPED)
    if kind == UNKNOWN:
        return Outcome(REJECTED, rejects=[make_reject(ctx, raw_type, rid, "resourceType", "unknown "
                                                      f"resourceType {raw_type!r}")])
    if validate:
        problem = validate_resource(res, ctx.rules, ctx.fhir_version)
        if problem is not None:
            return Outcome(REJECTED, rejects=[make_reject(ctx, raw_type, rid, problem[0], problem[1])])
    events, rejects = map_resource(res, ctx, sid)
    if rejects:
        return Outcome(REJECTED, rejects=rejects)
    return Outcome(MAPPED, events=events)


def summary_key(rec: Record) -> str:
    """The summary row a record counts under: its resourceType, or ``<unreadable>``."""
    return rec.resource_type or UNREADABLE


class Summary:
    """Per resource type counts: records in, mapped, rejected, skipped, duplicate (an identical copy of a
    resource read elsewhere in the input) and events produced; ``after_death``: events kept although later
    than their subject's MEDS_DEATH, per ``source``."""

    COLUMNS = ("in", MAPPED, "events", REJECTED, SKIPPED, DUPLICATE)

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, int]] = {}
        self.after_death: dict[str, int] = {}

    def add(self, key: str, status: str, n_events: int) -> None:
        """Count one record with its outcome."""
        row = self.rows.setdefault(key, dict.fromkeys(self.COLUMNS, 0))
        row["in"] += 1
        row[status] += 1
        row["events"] += n_events

    def merge_row(self, key: str, counts: dict[str, Any]) -> None:
        """Add pre-aggregated counts (from Spark) for ``key``."""
        row = self.rows.setdefault(key, dict.fromkeys(self.COLUMNS, 0))
        for c in self.COLUMNS:
            row[c] += int(counts.get(c) or 0)

    def totals(self) -> dict[str, int]:
        """Column sums over all resource types."""
        return {c: sum(r[c] for r in self.rows.values()) for c in self.COLUMNS}

    def reconciles(self) -> bool:
        """True when every row has ``in == mapped + rejected + skipped + duplicate``."""
        return all(r["in"] == r[MAPPED] + r[REJECTED] + r[SKIPPED] + r[DUPLICATE] for r in self.rows.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"by_resource_type": {...}, "totals": {...}, "reconciled": bool}``."""
        return {"by_resource_type": {k: self.rows[k] for k in sorted(self.rows)}, "totals": self.totals(),
                "reconciled": self.reconciles()}

    def table(self) -> str:
        """The summary as a fixed-width text table (printed by the CLI)."""
        head = f"{'resource type':<28}" + "".join(f"{c:>10}" for c in self.COLUMNS)
        lines = [head, "-" * len(head)]
        for k in sorted(self.rows):
            lines.append(f"{k:<28}" + "".join(f"{self.rows[k][c]:>10,}" for c in self.COLUMNS))
        t = self.totals()
        lines += ["-" * len(head), f"{'total':<28}" + "".join(f"{t[c]:>10,}" for c in self.COLUMNS)]
        return "\n".join(lines)
