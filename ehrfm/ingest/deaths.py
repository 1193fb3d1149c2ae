"""Events dated after their subject's death: flagged in the ``after_death`` column of the event shards
and counted per source for every source (FHIR, MIMIC-IV, MEDS input) by the writer; counted by the one-patient
FHIR path. How the label engines treat them: ehrfm/tasks/README.md ("Events after death")."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ehrfm.schema import CODE, DEATH_CODE, SUBJECT_ID, TIME


def after_death_mask(table: pa.Table) -> pa.ChunkedArray:
    """(rows,) bool, never null: the row is timed strictly after its subject's earliest timed
    ``MEDS_DEATH`` (static rows and subjects without a death: False). Works on any row order."""
    timed = pc.is_valid(table[TIME])
    deaths = table.filter(pc.and_(pc.equal(table[CODE], DEATH_CODE), timed))
    if deaths.num_rows == 0:
        return pa.chunked_array([pa.array(np.zeros(table.num_rows, dtype=bool))])
    first = deaths.group_by(SUBJECT_ID).aggregate([(TIME, "min")]).rename_columns([SUBJECT_ID, "_death"])
    # a join reorders rows: carry the row number through it and put the flags back in place
    rows = pa.table({SUBJECT_ID: table[SUBJECT_ID], TIME: table[TIME],
                     "_row": pa.array(np.arange(table.num_rows, dtype=np.int64))})
    joined = rows.join(first, SUBJECT_ID, join_type="inner")
    late_rows = joined.filter(pc.greater(joined[TIME], joined["_death"]).fill_null(False))["_row"]
    flags = np.zeros(table.num_rows, dtype=bool)
    flags[late_rows.to_numpy()] = True
    return pa.chunked_array([pa.array(flags)])


def count_after_death(table: pa.Table, mask: pa.ChunkedArray | None = None) -> dict[str, int]:
    """Events later than their subject's (earliest) ``MEDS_DEATH``, counted per ``source`` (``<none>``
    when null). They are kept (a late result or a record dated after death is real data, and which side is
    wrong is not knowable here) but counted so that nobody is surprised by them; the writer adds these
    counts to summary.json. ``mask``: :func:`after_death_mask` of ``table`` when the caller has it."""
    late_mask = after_death_mask(table) if mask is None else mask
    if table.num_rows == 0 or not pc.any(late_mask).as_py():
        return {}
    source = table["source"] if "source" in table.column_names else pa.nulls(table.num_rows, pa.string())
    late = pc.filter(source, late_mask)
    counts = pc.value_counts(late.fill_null("<none>"))
    values, ns = counts.field("values").to_pylist(), counts.field("counts").to_pylist()
    return {str(v): int(n) for v, n in zip(values, ns, strict=True)}
