"""Subject splits: one hash, three engines (Python, numpy, Spark) that agree exactly; ratios validated."""

from __future__ import annotations

import numpy as np
import pytest

from ehrfm.prepare.splits import (
    assign_split,
    assign_splits,
    parse_ratios,
    split_column,
    split_hash,
    validate_ratios,
)

EDGE_IDS = [0, 1, -1, 2**63 - 1, -(2**63), 10014729, 123456789012]


def _ids(n: int = 3000) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.concatenate([np.array(EDGE_IDS), rng.integers(-(2**63), 2**63 - 1, size=n), np.arange(n)])


@pytest.mark.parametrize("seed", [0, 7, -3])
@pytest.mark.parametrize("ratios", [(0.8, 0.1, 0.1), (0.5, 0.0, 0.5), (0.0, 0.0, 1.0)])
def test_numpy_matches_python(seed: int, ratios: tuple[float, float, float]) -> None:
    ids = _ids()
    vec = assign_splits(ids, ratios, seed)
    assert vec.shape == ids.shape
    assert list(vec) == [assign_split(int(i), ratios, seed) for i in ids]


@pytest.mark.spark
def test_spark_matches_python(spark) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    ids = [int(i) for i in _ids(500)]
    df = spark.createDataFrame([(i,) for i in ids], "subject_id long")
    for seed, ratios in [(0, (0.8, 0.1, 0.1)), (11, (0.34, 0.33, 0.33))]:
        rows = df.select(
            "subject_id",
            split_column("subject_id", ratios, seed).alias("split"),
            F.xxhash64("subject_id", F.lit(seed).cast("bigint")).alias("h"),
        ).collect()
        assert all((r["h"] & (2**64 - 1)) == split_hash(r["subject_id"], seed) for r in rows)
        assert {r["subject_id"]: r["split"] for r in rows} == {i: assign_split(i, ratios, seed) for i in ids}


def test_ratios_are_respected_and_seed_matters() -> None:
    ids = np.arange(100_000)
    a = assign_splits(ids, (0.8, 0.1, 0.1), 0)
    fractions = [(a == s).mean() for s in ("train", "tuning", "held_out")]
    assert np.allclose(fractions, [0.8, 0.1, 0.1], atol=0.01)
    b = assign_splits(ids, (0.8, 0.1, 0.1), 1)
    assert 0.25 < (a != b).mean() < 0.4  # a different seed reshuffles (expected 1 - 0.66 = 0.34)
    # growing the train ratio keeps every train subject in train (thresholds on one uniform draw)
    c = assign_splits(ids, (0.9, 0.05, 0.05), 0)
    assert np.all(c[a == "train"] == "train") and (c == "train").sum() > (a == "train").sum()


def test_split_of_a_subject_does_not_depend_on_the_others() -> None:
    ids = np.arange(1000)
    full = assign_splits(ids)
    assert list(assign_splits(ids[::-1][:10])) == list(full[::-1][:10])


@pytest.mark.parametrize("bad", [(0.8, 0.1), (0.8, 0.1, 0.2), (1.1, -0.1, 0.0), (float("nan"), 0.5, 0.5)])
def test_bad_ratios_are_rejected(bad: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="ratios"):
        validate_ratios(bad)


def test_parse_ratios() -> None:
    assert parse_ratios("0.7,0.15,0.15") == (0.7, 0.15, 0.15)
    with pytest.raises(ValueError, match="split-ratios"):
        parse_ratios("0.7;0.3")
