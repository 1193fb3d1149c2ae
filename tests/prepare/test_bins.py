"""Numeric bins: quantile cut points on train only, ties, file round trip, Spark within its stated rank error
of the exact (pandas) cut points."""

from __future__ import annotations

import os
import sys
from typing import Any

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark workers use this interpreter

from ehrfm.prepare.bins import Bins, fit_bins_pandas, fit_bins_spark, load_bins  # noqa: E402

SPLITS = pd.DataFrame({"subject_id": [1, 2, 3, 4], "split": ["train", "train", "tuning", "held_out"]})


def events(rows: list[tuple[int, str, float | None]]) -> pd.DataFrame:
    return pd.DataFrame({"subject_id": [r[0] for r in rows], "code": [r[1] for r in rows],
                         "numeric_value": np.array([np.nan if r[2] is None else r[2] for r in rows],
                                                   dtype=np.float32)})


RNG = np.random.default_rng(0)
BASE = ([(1 + i % 2, "LAB//A", float(v)) for i, v in enumerate(RNG.normal(10, 3, 200).round(2))]
        + [(1, "LAB//B", 0.0)] * 30 + [(2, "LAB//B", 1.0)] * 10  # heavy ties
        + [(1, "LAB//C", 1.0)] * 3  # too few values
        + [(1, "LAB//A", None), (1, "LAB//A", float("inf"))])  # ignored


def test_quantile_edges_ties_and_min_count() -> None:
    b = fit_bins_pandas(events(BASE), SPLITS, n_bins=4, min_count=5)
    a_vals = np.array([r[2] for r in BASE[:200]], dtype=np.float32).astype(np.float64)
    assert b.edges["LAB//A"] == pytest.approx(np.quantile(a_vals, [0.25, 0.5, 0.75]).tolist())
    assert b.edges["LAB//B"] == [0.0, 0.25]  # cut points 0, 0, 0.25 (linear interpolation), de-duplicated
    assert "LAB//C" not in b.edges
    assert b.bin_of("LAB//B", 0.0) == 1 and b.bin_of("LAB//B", -1) == 0 and b.bin_of("LAB//B", 5) == 2
    assert b.bin_of("LAB//A", float("nan")) is None and b.bin_of("NOPE", 1.0) is None
    vals = np.array([-100.0, b.edges["LAB//A"][1], np.nan, 100.0])  # a cut point goes to the upper bin
    assert b.bins_of("LAB//A", vals).tolist() == [0, 2, -1, 3]
    with pytest.raises(ValueError, match="n_bins"):
        fit_bins_pandas(events(BASE), SPLITS, n_bins=1)


def test_scaled_value_centre_spread_clip_and_ties() -> None:
    from ehrfm.prepare.bins import VALUE_CLIP

    b = Bins(n_bins=5, edges={"A": [1.0, 2.0, 3.0, 5.0], "T": [4.0], "Z": [0.0]})
    # centre = median cut point 2.5, spread = 5 - 1 = 4
    assert b.scaled_value("A", 4.5) == pytest.approx(0.5) and b.scaled_value("A", 0.5) == pytest.approx(-0.5)
    assert b.scaled_value("A", 1e9) == VALUE_CLIP and b.scaled_value("A", -1e9) == -VALUE_CLIP
    # ties collapsed the cut points: spread |centre| = 4
    assert b.scaled_value("T", 6.0) == pytest.approx(0.5)
    assert b.scaled_value("Z", 2.0) == pytest.approx(2.0)  # ... or 1 when the centre is 0
    for code, v in (("A", float("nan")), ("A", None), ("A", float("inf")), ("NOPE", 1.0)):
        assert np.isnan(b.scaled_value(code, v))


def test_held_out_and_tuning_changes_do_not_change_bins(tmp_path) -> None:
    noise = [(3, "LAB//A", 1000.0)] * 100 + [(4, "LAB//A", -50.0)] * 100 + [(4, "LAB//NEW", 1.0)] * 20
    fit_bins_pandas(events(BASE), SPLITS).save(tmp_path / "a.json")
    fit_bins_pandas(events(BASE + noise), SPLITS).save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_train_changes_do_change_bins() -> None:
    base = fit_bins_pandas(events(BASE), SPLITS)
    more = fit_bins_pandas(events(BASE + [(1, "LAB//A", 1000.0)] * 50), SPLITS)
    assert base.edges["LAB//A"] != more.edges["LAB//A"]


def test_file_round_trip(tmp_path) -> None:
    b = fit_bins_pandas(events(BASE), SPLITS, n_bins=7, min_count=3)
    b.save(tmp_path / "bins.json")
    back = load_bins(tmp_path / "bins.json")
    assert (back.n_bins, back.edges, back.min_count) == (7, b.edges, 3)
    (tmp_path / "bad.json").write_text('{"format": "x"}')
    with pytest.raises(ValueError, match="not an ehrfm bins file"):
        load_bins(tmp_path / "bad.json")
    assert isinstance(back, Bins)


def _rank_bounds(values: np.ndarray, edge: float) -> tuple[int, int]:
    """(values below ``edge``, values at or below it): the ranks ``edge`` takes in ``values``."""
    return int((values < edge).sum()), int((values <= edge).sum())


@pytest.mark.spark
@pytest.mark.parametrize("accuracy", [40, 10_000])
def test_spark_bins_within_the_stated_rank_error(spark: Any, accuracy: int) -> None:
    """Every Spark cut point is an observed train value whose rank is within n/accuracy of the level's rank
    q*n (the bound fit_bins_spark states), computed on the data; codes and min_count as pandas."""
    rng = np.random.default_rng(1)
    n = 3000
    rows = ([(1 + i % 2, "LAB//A", float(v)) for i, v in enumerate(rng.lognormal(2, 1, n))]
            + [(1 + i % 2, "LAB//D", float(v)) for i, v in enumerate(rng.normal(0, 5, n))]
            + [(1, "LAB//C", 1.0)] * 3 + [(3, "LAB//A", 1e6)] * 50)  # too few values; not train
    ev = pd.DataFrame(rows, columns=["subject_id", "code", "numeric_value"])
    n_bins = 8
    sp = fit_bins_spark(spark.createDataFrame(ev), spark.createDataFrame(SPLITS), n_bins=n_bins, min_count=5,
                        accuracy=accuracy)
    exact = fit_bins_pandas(ev, SPLITS, n_bins=n_bins, min_count=5)
    assert sp.edges.keys() == exact.edges.keys() == {"LAB//A", "LAB//D"}
    differs = False
    for code in sp.edges:
        train = ev.loc[(ev["code"] == code) & ev["subject_id"].isin([1, 2]), "numeric_value"].to_numpy()
        assert len(sp.edges[code]) == len(exact.edges[code]) == n_bins - 1  # distinct values: no ties
        for k, (edge, want) in enumerate(zip(sp.edges[code], exact.edges[code], strict=True), start=1):
            assert edge in set(train), (code, k)  # an observed value
            below, at_or_below = _rank_bounds(train, edge)
            target, err = k / n_bins * len(train), len(train) / accuracy
            assert below <= target + err and at_or_below >= target - err, (code, k, below, target, err)
            differs |= edge != want
    assert differs  # approximate: the observed values differ from the interpolated exact cut points


@pytest.mark.spark
def test_spark_accuracy_is_checked(spark: Any) -> None:
    ev = events(BASE)
    with pytest.raises(ValueError, match="accuracy"):
        fit_bins_spark(spark.createDataFrame(ev), spark.createDataFrame(SPLITS), accuracy=0)
