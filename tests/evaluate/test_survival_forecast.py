"""Time-to-event and forecasting metrics on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ehrfm.evaluate.forecast import forecast_metrics, frequency_baseline, precision_recall_at_k
from ehrfm.evaluate.survival import (
    harrell_c,
    kaplan_meier,
    risk_from_survival,
    surv_array,
    survival_at,
    tte_metrics,
    valid_times,
)

DUR = np.arange(1.0, 21.0)
EV = np.array([1, 1, 0, 1] * 5)


def test_perfect_ordering_gives_concordance_one() -> None:
    assert harrell_c(EV, DUR, -DUR) == 1.0
    assert harrell_c(EV, DUR, DUR) == 0.0
    train = surv_array(EV, DUR + 0.5)
    res, hs = tte_metrics(train, EV, DUR, np.arange(20), -DUR, horizons=[5, 10, 15], n_boot=0)
    assert res["harrell_c"].value == 1.0 and res["uno_c"].value == pytest.approx(1.0)
    assert hs == [5.0, 10.0, 15.0]
    for h in hs:
        assert res[f"auc@{h:g}d"].value == pytest.approx(1.0)


def test_survival_curves_metrics_and_ibs() -> None:
    grid = np.array([5.0, 10.0, 15.0])
    # S(t) = 1 until the subject's own time, 0 after: the best possible survival prediction
    good = (grid[None, :] < DUR[:, None]).astype(float)
    bad = 1 - good
    train = surv_array(EV, DUR + 0.5)
    g, _ = tte_metrics(train, EV, DUR, np.arange(20), risk_from_survival(good, grid), good, grid, [5, 10, 15],
                       n_boot=10)
    b, _ = tte_metrics(train, EV, DUR, np.arange(20), risk_from_survival(bad, grid), bad, grid, [5, 10, 15],
                       n_boot=0)
    assert g["ibs"].value < 0.05 < b["ibs"].value
    assert g["mean_auc"].value == pytest.approx(1.0)
    assert g["harrell_c"].value > 0.85  # ties within grid steps keep it below 1


def test_step_lookup_and_valid_horizons() -> None:
    s = np.array([[0.9, 0.5, 0.2]])
    grid = np.array([10.0, 20.0, 30.0])
    np.testing.assert_allclose(survival_at(s, grid, np.array([0.0, 10.0, 15.0, 35.0])),
                               [[1.0, 0.9, 0.9, 0.2]])
    np.testing.assert_allclose(risk_from_survival(s, grid), [-(0.9 * 10 + 0.5 * 10 + 0.2 * 10)])
    # test follow-up [1, 10], train up to 20: horizons must lie in [1, 10)
    kept, dropped = valid_times(surv_array(EV, DUR), surv_array(EV[:10], DUR[:10]), [0.5, 5, 9.5, 10, 30])
    assert list(kept) == [5.0, 9.5] and dropped == [0.5, 10.0, 30.0]
    kept, _ = valid_times(surv_array(EV[:5], DUR[:5]), surv_array(EV, DUR), [3, 7])
    assert list(valid_times(surv_array(EV, DUR), surv_array(EV, DUR), [4, 4, 4])[0]) == [4.0]
    assert list(kept) == [3.0]  # 7 is past the train follow-up (max 5): the censoring model cannot reach it


def test_kaplan_meier_by_hand() -> None:
    t, s = kaplan_meier(np.array([1, 0, 1]), np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(t, [1, 2, 3])
    np.testing.assert_allclose(s, [2 / 3, 2 / 3, 0.0])


def test_no_events_is_nan_with_reason() -> None:
    train = surv_array(EV, DUR)
    res, _ = tte_metrics(train, np.zeros(5), DUR[:5], np.arange(5), -DUR[:5], horizons=[2], n_boot=5)
    assert math.isnan(res["harrell_c"].value) and res["harrell_c"].reason == "no events"
    # a 1-row subgroup
    one, _ = tte_metrics(train, EV[:1], DUR[:1], np.arange(1), -DUR[:1], horizons=[2], n_boot=5)
    assert one["harrell_c"].reason == "fewer than two rows" and math.isnan(one["uno_c"].value)
    assert one["mean_auc"].reason == "no horizon inside the follow-up range"


def test_bad_duration_names_the_field() -> None:
    with pytest.raises(ValueError, match="duration_days.*row 1"):
        surv_array(np.array([1, 0]), np.array([1.0, -2.0]))


def test_precision_recall_at_k_by_hand() -> None:
    pred = [["a", "b", "c"], ["x", "y", "z"], ["a", "b", "c"]]
    tgt = [["a", "c", "d", "e"], ["q"], []]
    prec, rec = precision_recall_at_k(pred, tgt, k=2)
    np.testing.assert_allclose(prec, [0.5, 0.0, 0.0])  # only "a" in top-2 of row 0
    np.testing.assert_allclose(rec[:2], [0.25, 0.0])
    assert math.isnan(rec[2])
    res = forecast_metrics(pred, tgt, np.array([1, 2, 3]), k=2, n_boot=0)
    assert res["precision@2"].value == pytest.approx(0.5 / 3)
    assert res["recall@2"].value == pytest.approx(0.125)  # empty-target row excluded


def test_frequency_baseline() -> None:
    train = [["a", "b"], ["b", "c"], ["b", "a", "a"], ["d"]]
    assert frequency_baseline(train, k=2) == ["b", "a"]  # a counted once per row
    assert frequency_baseline(train, k=10) == ["b", "a", "c", "d"]
