"""Binary metrics against hand-computed values; cluster bootstrap units; degenerate cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ehrfm.evaluate.binary import (
    auprc,
    auroc,
    binary_metrics,
    brier,
    choose_threshold,
    confusion_at,
    ece,
    reliability_curve,
)
from ehrfm.evaluate.bootstrap import DegenerateMetric, bootstrap_metrics, cluster_resample_indices

Y = np.array([0, 0, 1, 1], dtype=float)
P = np.array([0.1, 0.4, 0.35, 0.8])


def test_hand_computed_values() -> None:
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
    assert auroc(Y, P) == pytest.approx(0.75)
    # ranked: 0.8(+) 0.4(-) 0.35(+) 0.1(-): AP = 0.5*1 + 0.5*(2/3)
    assert auprc(Y, P) == pytest.approx(0.5 + 1 / 3)
    assert brier(Y, P) == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    # equal-mass bins of 2 sorted by p: {0.1(0), 0.35(1)} -> |0.5-0.225|; {0.4(0), 0.8(1)} -> |0.5-0.6|
    assert ece(Y, P, n_bins=2) == pytest.approx(0.5 * 0.275 + 0.5 * 0.1)
    mean_p, obs = reliability_curve(Y, P, n_bins=2)
    np.testing.assert_allclose(mean_p, [0.225, 0.6])
    np.testing.assert_allclose(obs, [0.5, 0.5])
    # p >= 0.4 -> predictions 0,1,0,1: tp=fp=fn=tn=1
    assert confusion_at(Y, P,
                        0.4) == pytest.approx({"sensitivity": 0.5, "specificity": 0.5, "ppv": 0.5, "f1": 0.5})


def test_thresholds_on_separable_data() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.9])
    assert choose_threshold(y, p, "youden") == pytest.approx(0.7)
    assert choose_threshold(y, p, "max_f1") == pytest.approx(0.7)
    assert choose_threshold(y, p, "fixed", fixed=0.3) == 0.3
    assert choose_threshold(np.zeros(4), p, "youden") == 0.5  # one class on tuning: documented fallback
    with pytest.raises(ValueError, match="unknown threshold rule"):
        choose_threshold(y, p, "best")  # type: ignore[arg-type]


def test_one_class_is_nan_with_reason_not_a_crash() -> None:
    with pytest.raises(DegenerateMetric):
        auroc(np.ones(3), np.array([0.1, 0.2, 0.3]))
    res = binary_metrics(np.ones(3), np.array([0.1, 0.2, 0.9]), np.array([1, 2, 3]), 0.5, n_boot=20)
    assert math.isnan(res["auroc"].value) and res["auroc"].reason == "only one class present"
    assert res["auroc"].to_dict()["value"] is None
    assert res["brier"].value == pytest.approx((0.81 + 0.64 + 0.01) / 3)
    assert math.isnan(res["specificity"].value) and "specificity undefined" in str(res["specificity"].reason)


def test_cluster_bootstrap_resamples_subjects_as_units() -> None:
    groups = np.array([7, 7, 7, 8, 9, 9])
    rng = np.random.default_rng(1)
    for _ in range(50):
        idx = cluster_resample_indices(groups, rng)
        counts = np.bincount(idx, minlength=6)
        assert counts[0] == counts[1] == counts[2]  # subject 7's three rows travel together
        assert counts[4] == counts[5]
        # as many subject draws as subjects: total rows = sum of draws x rows per subject
        draws = {7: counts[0], 8: counts[3], 9: counts[4]}
        assert sum(draws.values()) == 3
        assert len(idx) == 3 * draws[7] + draws[8] + 2 * draws[9]


def test_bootstrap_ci_seeded_and_configurable() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(float)
    p = np.clip(0.3 * y + 0.7 * rng.random(200), 0, 1)
    g = np.repeat(np.arange(100), 2)
    a = binary_metrics(y, p, g, 0.5, n_boot=50, seed=3)
    b = binary_metrics(y, p, g, 0.5, n_boot=50, seed=3)
    c = binary_metrics(y, p, g, 0.5, n_boot=50, seed=4)
    assert a["auroc"] == b["auroc"] and a["auroc"].ci_low != c["auroc"].ci_low
    assert a["auroc"].ci_low < a["auroc"].value < a["auroc"].ci_high
    assert a["auroc"].n_boot == 50
    assert a["prevalence"].value == pytest.approx(y.mean())
    assert binary_metrics(y, p, g, 0.5, n_boot=0)["auroc"].n_boot == 0


def test_resamples_with_one_class_are_dropped_not_fatal() -> None:
    # 2 subjects, one positive-only, one negative-only: many resamples draw one subject twice
    y = np.array([1, 1, 0, 0], dtype=float)
    p = np.array([0.9, 0.8, 0.2, 0.1])
    res = bootstrap_metrics({"auroc": lambda i: auroc(y[i], p[i])}, np.array([1, 1, 2, 2]), n_boot=40, seed=0)
    assert res["auroc"].value == 1.0
    assert 0 < res["auroc"].n_boot < 40


def test_bad_probability_names_field_and_row() -> None:
    with pytest.raises(ValueError, match="field 'prob': row 1"):
        binary_metrics(np.array([0, 1]), np.array([0.2, 1.5]), np.array([1, 2]), 0.5, n_boot=0)
