"""The summary of an ``ehrfm ingest`` run: the writer's summary dict (what summary.json holds) as an
:class:`~ehrfm.config.ingest.IngestSummary`, with per-input-type counts in one shape for every source,
and its printed form."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from ehrfm.config.ingest import IngestSummary
from ehrfm.layout import MEDS_DATA, MEDS_METADATA, MEDS_REJECTS, MEDS_SUMMARY

COUNTS = ("in", "mapped", "events", "rejected", "skipped", "duplicate")
"""Per input type: records in, mapped (became events), events produced, rejected, skipped by design, and
duplicate (an identical copy of a record read elsewhere in the input; FHIR only)."""


def fhir_counts(result: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Per FHIR resource type (``by_resource_type`` of the FHIR summary)."""
    return {k: {c: int(row.get(c) or 0) for c in COUNTS} for k, row in result["by_resource_type"].items()}


def mimic_counts(result: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """Per MIMIC rule: the rows of its table in, rows that became events (``mapped``; a row split into
    several events, omr's ``120/80``, is one row and two ``events``), rows rejected, and (rules with a
    ``when`` column) skipped as not applicable. ``in`` is the table's row count when known, so a rule
    reconciles only when every row of its table is accounted for. (Summaries without the row counts of a
    rule count its events and rejects as rows.)"""
    tables = result.get("tables", {})
    out: dict[str, dict[str, int]] = {}
    for name, e in result["rules"].items():
        events = int(e["events"])
        mapped = int(e.get("rows_mapped", events))
        rejected = int(e.get("rows_rejected", sum(e["rejects"].values())))
        skipped = int(e.get("not_applicable", 0))
        rows = tables.get(e["table"], {}).get("rows")
        n_in = int(rows) if rows is not None else mapped + rejected + skipped
        out[name] = {"in": n_in, "mapped": mapped, "events": events, "rejected": rejected, "skipped": skipped,
                     "duplicate": 0}
    return out


def meds_counts(result: Mapping[str, Any]) -> dict[str, dict[str, int]]:
    """One row, ``meds``: input rows, events (one per good row), rejected rows."""
    events, rejected = int(result["events"]), int(result["rejects"])
    return {"meds": {"in": int(result["rows_in"]), "mapped": events, "events": events, "rejected": rejected,
                     "skipped": 0, "duplicate": 0}}


def make_summary(source: Literal["fhir", "mimic", "meds"], result: Mapping[str, Any],
                 by_type: dict[str, dict[str, int]], output: str, seconds: float) -> IngestSummary:
    """The typed summary of one run from the writer's result dict and the per-type counts."""
    totals = {c: sum(row[c] for row in by_type.values()) for c in COUNTS}
    reconciled = all(r["in"] == r["mapped"] + r["rejected"] + r["skipped"] + r["duplicate"]
                     for r in by_type.values())
    late = (result.get("after_death") or {}).get("by_source") or {}
    return IngestSummary(
        source=source, output=output, dataset_name=str(result["dataset_name"]), events=int(result["events"]),
        subjects=int(result["subjects"]), codes=int(result["codes"]), rejects=int(result["rejects"]),
        splits={k: int(v) for k, v in result["splits"].items()}, by_type=dict(sorted(by_type.items())),
        totals=totals, reconciled=reconciled, seconds=round(seconds, 1),
        after_death={str(k): int(v) for k, v in late.items()},
        skipped_links=len(result.get("skipped_links") or []),
    )


def format_table(summary: IngestSummary) -> str:
    """The per-input-type counts as a fixed-width text table with a total row."""
    width = max([len("total"), len("input type")] + [len(k) for k in summary.by_type]) + 2
    head = f"{'input type':<{width}}" + "".join(f"{c:>11}" for c in COUNTS)
    lines = [head, "-" * len(head)]
    for k, row in summary.by_type.items():
        lines.append(f"{k:<{width}}" + "".join(f"{row[c]:>11,}" for c in COUNTS))
    lines += ["-" * len(head), f"{'total':<{width}}" + "".join(f"{summary.totals[c]:>11,}" for c in COUNTS)]
    return "\n".join(lines)


def print_summary(summary: IngestSummary) -> None:
    """Print the table, the dataset counts and where it was written."""
    print(format_table(summary))
    print(f"events {summary.events:,}  subjects {summary.subjects:,}  codes {summary.codes:,}  "
          f"rejects {summary.rejects:,}  ({summary.seconds:.1f} s)"
          + ("" if summary.reconciled else "  NOT RECONCILED"))
    print("splits " + json.dumps(summary.splits))
    if summary.after_death:
        print(f"kept but dated after the subject's death: {sum(summary.after_death.values()):,} events "
              + json.dumps(summary.after_death))
    if summary.skipped_links:
        print(f"input links not followed (cycles, files or folders already read): {summary.skipped_links:,}; "
              f"listed in {MEDS_SUMMARY} (skipped_links)")
    print(f"wrote {summary.output} ({MEDS_SUMMARY}, {MEDS_DATA}/, {MEDS_METADATA}/, {MEDS_REJECTS}/)")
