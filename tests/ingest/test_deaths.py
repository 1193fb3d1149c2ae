"""``after_death_mask`` / ``count_after_death``: events after the subject's first death, in any row order."""

from __future__ import annotations

import pyarrow as pa

from ehrfm.ingest.deaths import after_death_mask, count_after_death


def _table(rows: list[tuple[int, int | None, str, str | None]]) -> pa.Table:
    sid, t, code, source = zip(*rows, strict=True)
    return pa.table({"subject_id": pa.array(sid, pa.int64()), "time": pa.array(t, pa.timestamp("us")),
                     "code": pa.array(code), "source": pa.array(source, pa.string())})


def test_flags_only_events_strictly_after_the_first_death_of_their_own_subject() -> None:
    t = _table([
        (2, 50, "LAB", "lab"),        # after subject 1's death, but subject 2 never dies
        (1, 30, "LAB", "lab"),        # after the first death
        (1, None, "GENDER//F", None),  # static: never after death
        (1, 10, "MEDS_DEATH", "a"),   # the first death itself: not after it
        (1, 20, "MEDS_DEATH", "b"),   # a second death record, after the first
        (1, 5, "LAB", "lab"),
        (1, 10, "LAB", None),         # at the death instant: not after it
    ])
    assert after_death_mask(t).to_pylist() == [False, True, False, False, True, False, False]
    assert count_after_death(t) == {"lab": 1, "b": 1}
    assert count_after_death(t, after_death_mask(t)) == {"lab": 1, "b": 1}


def test_no_death_no_flags() -> None:
    t = _table([(1, 5, "LAB", None), (1, None, "GENDER//M", None)])
    assert after_death_mask(t).to_pylist() == [False, False]
    assert count_after_death(t) == {} and after_death_mask(t.slice(0, 0)).to_pylist() == []
