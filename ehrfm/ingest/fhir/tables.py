"""Event / reject dicts -> pyarrow tables in the shared schemas, and the canonical event order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from ehrfm.schema import EVENT_COLUMNS, EVENTS_SCHEMA, REJECTS_SCHEMA

# canonical order: subject, then static rows (null time) first, then time; the rest breaks ties so
# the order is total and two engines can be compared row by row
SORT_COLUMNS = ("subject_id", "time", "code", "encounter_id", "numeric_value", "text_value", "unit", "source")


def events_table(events: Sequence[dict[str, Any]]) -> pa.Table:
    """EVENTS_SCHEMA table from event dicts (``time`` as int microseconds or ``None``)."""
    cols = {c: [e.get(c) for e in events] for c in EVENT_COLUMNS}
    return pa.Table.from_pydict(cols, schema=EVENTS_SCHEMA)


def rejects_table(rejects: Sequence[dict[str, Any]]) -> pa.Table:
    """REJECTS_SCHEMA table from reject dicts."""
    cols = {f.name: [r.get(f.name) for r in rejects] for f in REJECTS_SCHEMA}
    return pa.Table.from_pydict(cols, schema=REJECTS_SCHEMA)


def sort_events(table: pa.Table) -> pa.Table:
    """Rows in the canonical order (:data:`SORT_COLUMNS`, nulls first)."""
    try:
        return table.sort_by([(c, "ascending", "at_start") for c in SORT_COLUMNS])  # pyarrow >= 25
    except (TypeError, ValueError):
        return table.sort_by([(c, "ascending") for c in SORT_COLUMNS], null_placement="at_start")

