"""Count features (windows, inclusive boundary, train-only vocabulary, leakage) and subgroup attributes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import Synth

from ehrfm.evaluate.baselines import run_baselines
from ehrfm.evaluate.bootstrap import MetricValue
from ehrfm.evaluate.data import attach_split, load_splits
from ehrfm.evaluate.features import CountFeaturizer
from ehrfm.evaluate.subgroups import age_band, subgroup_attributes, subgroup_table

PT = pd.Timestamp("2021-01-01 12:00")


def _ev(rows: list[tuple[int, str | None, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {"subject_id": [r[0] for r in rows], "time": pd.to_datetime([r[1] for r in rows], format="ISO8601"),
         "code": [r[2] for r in rows]}
    )


def _feat(events: pd.DataFrame, rows: pd.DataFrame, train: np.ndarray,
          min_count: int = 1) -> tuple[CountFeaturizer, np.ndarray]:
    f = CountFeaturizer(min_count=min_count)
    return f, f.fit_transform(events, rows, train).toarray()


def test_window_counts_by_hand_with_inclusive_boundaries() -> None:
    events = _ev([
        (1, None, "GENDER//F"),
        (1, "1960-01-01", "MEDS_BIRTH"),
        (1, "2021-01-01 12:00", "A"),  # exactly at prediction_time: included
        (1, "2020-12-02 12:00", "A"),  # exactly 30 days before: included in the 30 d window
        (1, "2020-12-02 11:59", "B"),  # one minute earlier: 365 d only
        (1, "2015-01-01", "B"),  # all history only
        (1, "2021-01-01 12:00:01", "A"),  # one second after: never
        (2, "2020-06-01", "B"),
    ])
    rows = pd.DataFrame({"subject_id": [1, 2, 3], "prediction_time": [PT, PT, PT]})
    f, X = _feat(events, rows, np.array([True, True, True]))
    col = {n: i for i, n in enumerate(f.feature_names())}
    assert X[0, col["A@30d"]] == 2 and X[0, col["A@365d"]] == 2 and X[0, col["A@all"]] == 2
    assert X[0, col["B@30d"]] == 0 and X[0, col["B@365d"]] == 1 and X[0, col["B@all"]] == 2
    assert X[0, col["GENDER//F@30d"]] == 0 and X[0, col["GENDER//F@all"]] == 1  # static rows: all history
    assert X[0, col["age_years"]] == pytest.approx((PT - pd.Timestamp("1960-01-01")).days / 365.25, abs=0.01)
    assert X[0, col["sex_F"]] == 1 and X[0, col["sex_M"]] == 0
    assert X[1, col["B@365d"]] == 1 and X[1, col["A@all"]] == 0
    assert np.isnan(X[2, col["age_years"]]) and np.nansum(X[2]) == 0  # subject without events


def test_vocabulary_is_fitted_on_train_rows_only() -> None:
    events = _ev([(1, "2020-01-01", "A"), (2, "2020-01-01", "A"), (3, "2020-01-01", "HELDOUT_ONLY"),
                  (3, "2020-01-01", "A")])
    rows = pd.DataFrame({"subject_id": [1, 2, 3], "prediction_time": [PT] * 3})
    f, _ = _feat(events, rows, np.array([True, True, False]), min_count=2)
    assert f.vocab == ["A"]


def test_events_after_prediction_time_do_not_change_features(synth: Synth) -> None:
    rows = synth.labels_by_task["readmission"]
    split = attach_split(rows, load_splits(synth.meds))["split"].to_numpy()
    train = split == "train"
    base = synth.events[synth.events["code"] != "DIAGNOSIS//ICD//10//FUTURE"]
    f0, X0 = _feat(base, rows, train, min_count=3)
    # plant events 1 s, 1 day and 1 year after each subject's LAST prediction_time (so after every label
    # row of that subject): known and brand-new codes, a second birth and a contradicting sex
    last_pt = rows.groupby("subject_id")["prediction_time"].max()
    planted = pd.concat(
        [
            pd.DataFrame({"subject_id": last_pt.index, "time": last_pt.to_numpy() + d, "code": c})
            for d in (pd.Timedelta(seconds=1), pd.Timedelta(days=1), pd.Timedelta(days=365))
            for c in ("DIAGNOSIS//ICD//10//C1", "LEAK//NEW", "MEDS_BIRTH", "GENDER//M")
        ]
    )
    f1, X1 = _feat(pd.concat([base, planted], ignore_index=True), rows, train, min_count=3)
    assert f0.vocab == f1.vocab and "LEAK//NEW" not in f1.vocab
    np.testing.assert_array_equal(X0, X1)


def test_baselines_cannot_see_the_future_marker(synth: Synth) -> None:
    labels = attach_split(synth.labels_by_task["readmission"], load_splits(synth.meds))
    pred = run_baselines(synth.events, labels, "readmission", "binary", ["lr"])
    held = pred["split"].to_numpy() == "held_out"
    from sklearn.metrics import roc_auc_score

    auc = roc_auc_score(labels["boolean_value"].to_numpy()[held], pred["prob"].to_numpy()[held])
    # FUTURE (recorded 3 days after prediction_time) is a perfect marker; the oracle is ~0.85
    assert 0.6 < auc < 0.95
    assert set(pred.columns) >= {"subject_id", "prediction_time", "task", "split", "model", "prob"}


def test_binary_baselines_with_one_class_on_train_predict_its_rate(synth: Synth) -> None:
    """Tiny real cohorts (MIMIC demo, Synthea) can have no positive among the train rows of a task."""
    labels = attach_split(synth.labels_by_task["readmission"], load_splits(synth.meds))
    labels.loc[labels["split"] == "train", "boolean_value"] = False
    with pytest.warns(UserWarning, match="one class"):
        pred = run_baselines(synth.events, labels, "readmission", "binary", ["lr", "hgb"])
    assert set(pred["model"]) == {"baseline_lr", "baseline_hgb"} and len(pred) == 2 * len(labels)
    assert (pred["prob"] == 0.0).all()


def test_age_bands() -> None:
    assert [age_band(a) for a in (0, 39.99, 40, 64.9, 65, 79.99, 80, 101)] == [
        "<40", "<40", "40-64", "40-64", "65-79", "65-79", "80+", "80+"]
    assert age_band(float("nan")) == "unknown"


def test_subgroup_attributes_use_last_value_at_or_before_prediction_time() -> None:
    events = _ev([
        (1, None, "GENDER//M"), (1, "1950-06-01", "MEDS_BIRTH"),
        # at pt: used
        (1, "2020-01-01", "INSURANCE//PRIVATE"), (1, "2021-01-01 12:00", "INSURANCE//MEDICARE"),
        (2, None, "GENDER//F"), (2, "1990-01-01", "MEDS_BIRTH"),
        # after pt: not used
        (2, "2020-01-01", "INSURANCE//MEDICAID"), (2, "2021-01-02", "INSURANCE//MEDICARE"),
        (3, "2022-01-01", "INSURANCE//MEDICARE"),
    ])
    rows = pd.DataFrame({"subject_id": [1, 2, 3], "prediction_time": [PT] * 3})
    a = subgroup_attributes(events, rows)
    assert list(a.columns) == ["age_band", "sex", "insurance"]  # no RACE// codes in this data: omitted
    assert list(a["age_band"]) == ["65-79", "<40", "unknown"]
    assert list(a["sex"]) == ["M", "F", "unknown"]
    assert list(a["insurance"]) == ["MEDICARE", "MEDICAID", "unknown"]


def test_subgroup_table_counts_and_tiny_flag() -> None:
    attrs = pd.DataFrame({"sex": ["F"] * 60 + ["M"] * 5})
    pos = np.r_[np.tile([0, 1], 30), [1, 1, 1, 1, 1]]

    def compute(i: np.ndarray) -> dict[str, MetricValue]:
        return {"n_rows": MetricValue(float(len(i)))}

    t = subgroup_table(attrs, np.arange(65), pos, compute, min_n=50, min_pos=10)
    assert [(r["group"], r["n"], r["positives"], r["tiny"]) for r in t] == [("F", 60, 30, False),
                                                                            ("M", 5, 5, True)]
    assert t[1]["metrics"]["n_rows"]["value"] == 5.0
