"""Events dated after their subject's death: counted for every source (FHIR, MIMIC-IV, MEDS input) by the
writer, and by the one-patient FHIR path.

The count is reported, not a column: a flag column would be an extension of the MEDS event schema shared by
every stage (``ehrfm.schema.EVENTS_SCHEMA``), which this project keeps fixed."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ehrfm.schema import CODE, DEATH_CODE, SUBJECT_ID, TIME


def count_after_death(table: pa.Table) -> dict[str, int]:
    """Events later than their subject's (earliest) ``MEDS_DEATH``, counted per ``source`` (``<none>``
    when null). They are kept (a late result or a record dated after death is real data, and which side is
    wrong is not knowable here) but counted so that nobody is surprised by them; the writer adds these
    counts to summary.json. Works on any row order."""
    timed = pc.is_valid(table[TIME])
    deaths = table.filter(pc.and_(pc.equal(table[CODE], DEATH_CODE), timed))
    if deaths.num_rows == 0:
        return {}
    first = deaths.group_by(SUBJECT_ID).aggregate([(TIME, "min")]).rename_columns([SUBJECT_ID, "_death"])
    source = table["source"] if "source" in table.column_names else pa.nulls(table.num_rows, pa.string())
    rows = pa.table({SUBJECT_ID: table[SUBJECT_ID], TIME: table[TIME], "source": source}).filter(timed)
    joined = rows.join(first, SUBJECT_ID, join_type="inner")
    late = joined.filter(pc.greater(joined[TIME], joined["_death"]))
    counts = pc.value_counts(late["source"].fill_null("<none>"))
    values, ns = counts.field("values").to_pylist(), counts.field("counts").to_pylist()
    return {str(v): int(n) for v, n in zip(values, ns, strict=True)}
