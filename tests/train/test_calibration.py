"""Post-hoc calibration (ehrfm.train.calibration): on synthetic scores with a known miscalibration ECE drops
and AUROC is unchanged (the maps are strictly increasing); auto keeps raw scores that are already
calibrated and guards isotonic on small tuning sets; tte per-horizon maps keep survival non-increasing;
forecast temperature recovers a planted temperature; calibration.json round trips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ehrfm.evaluate.binary import auroc, ece
from ehrfm.train.calibration import (
    Calibration,
    ProbMap,
    TaskCalibration,
    censoring_weights,
    fit_binary,
    fit_isotonic,
    fit_platt,
    fit_temperature,
    fit_tte,
)


def _miscalibrated(n: int, seed: int, scale: float = 2.5, shift: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True risks sigmoid(z); the "model" reports sigmoid(scale * z + shift): overconfident and too high."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-2.0, 1.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(float)
    p = 1 / (1 + np.exp(-(scale * z + shift)))
    return p, y, np.arange(n) // 2  # two rows per subject


@pytest.mark.parametrize("method", ["platt", "isotonic", "auto"])
def test_binary_calibration_lowers_ece_and_keeps_auroc(method: str) -> None:
    p_tune, y_tune, g_tune = _miscalibrated(4000, 0)
    p_test, y_test, _ = _miscalibrated(4000, 1)
    cal = fit_binary("t", p_tune, y_tune, g_tune, method)
    q = cal.prob(p_test)
    assert cal.method in ("platt", "isotonic")
    assert ece(y_test, p_test) > 0.05  # the planted miscalibration is visible
    assert ece(y_test, q) < 0.03, (method, ece(y_test, q))
    assert auroc(y_test, q) == pytest.approx(auroc(y_test, p_test), abs=1e-12)
    order = np.argsort(p_test)
    assert np.all(np.diff(q[order]) >= 0)


def test_auto_keeps_calibrated_scores_and_guards_isotonic() -> None:
    rng = np.random.default_rng(3)
    z = rng.normal(-1.0, 1.0, 3000)
    p = 1 / (1 + np.exp(-z))
    y = (rng.random(3000) < p).astype(float)
    cal = fit_binary("t", p, y, np.arange(3000), "auto")
    assert cal.method in ("none", "platt")  # isotonic cannot beat the truth out of sample
    if cal.method == "platt":
        assert cal.maps[0].a == pytest.approx(1.0, abs=0.15) and abs(cal.maps[0].b) < 0.15
    small_p, small_y, small_g = _miscalibrated(300, 4)
    assert small_y.sum() < 50
    small = fit_binary("t", small_p, small_y, small_g, "auto", min_positives=50)
    assert small.method != "isotonic" and "isotonic" not in small.fit["cv_log_loss"]
    one_class = fit_binary("t", small_p, np.zeros_like(small_y), small_g, "auto")
    assert one_class.method == "none" and "one class" in one_class.fit["note"]


def test_platt_recovers_planted_parameters_and_isotonic_is_monotone() -> None:
    p, y, _ = _miscalibrated(20000, 5, scale=2.0, shift=0.5)
    m = fit_platt(p, y)
    assert m.a == pytest.approx(0.5, abs=0.05) and m.b == pytest.approx(-0.25, abs=0.1)
    iso = fit_isotonic(p, y)
    grid = np.linspace(-0.5, 1.5, 50)  # outside [0, 1] too: clipped, never extrapolated
    out = iso(np.clip(grid, 0, 1))
    assert np.all(np.diff(out) >= 0) and out.min() >= 0 and out.max() <= 1
    assert ProbMap()(p) is not None and np.array_equal(ProbMap()(p), p)


def test_censoring_weights() -> None:
    event = np.array([1, 0, 1, 0, 1])
    dur = np.array([10.0, 20.0, 40.0, 50.0, 100.0])
    y, w = censoring_weights(event, dur, 45.0)
    assert y.tolist() == [1, 0, 1, 0, 0]
    assert w[1] == 0  # censored before the horizon: status unknown
    assert w[0] == 1.0 and w[2] == pytest.approx(1 / (1 - 1 / 4))  # G just before 40: one of 4 censored
    assert w[3] > 0 and w[4] > 0


def test_tte_calibration_keeps_survival_non_increasing_and_improves_horizon_calibration() -> None:
    rng = np.random.default_rng(7)
    n, edges = 6000, [0.0, 30.0, 90.0, 180.0]
    rate = np.exp(rng.normal(np.log(1 / 400), 0.8, n))  # exponential event times, true hazard per day
    t_event = rng.exponential(1 / rate)
    t_cens = rng.uniform(60, 400, n)
    dur, event = np.minimum(t_event, t_cens), (t_event <= t_cens).astype(int)
    true_s = np.exp(-np.outer(rate, edges))
    raw_s = true_s ** 2.0  # a model that doubles every cumulative hazard: too pessimistic
    half = n // 2
    cal = fit_tte("t", raw_s[:half], edges, event[:half], dur[:half], np.arange(half), "auto")
    assert len(cal.maps) == 3 and all(m.method == "platt" for m in cal.maps)
    s = cal.survival(raw_s[half:])
    assert np.all(s[:, 0] == 1) and np.all(np.diff(s, axis=1) <= 1e-12)
    # at 30 days every row is observed (censoring starts at 60): compare with the true risk directly
    err_raw = np.abs((1 - raw_s[half:, 1]) - (1 - true_s[half:, 1])).mean()
    err_cal = np.abs((1 - s[:, 1]) - (1 - true_s[half:, 1])).mean()
    assert err_cal < err_raw / 3, (err_raw, err_cal)
    assert fit_tte("t", raw_s, edges, event, dur, np.arange(n), "none").maps == []


def test_temperature_recovers_a_planted_temperature() -> None:
    rng = np.random.default_rng(11)
    z = rng.normal(0, 1.5, (3000, 40))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    targets = [np.array([rng.choice(40, p=row)]) for row in p]
    cal = fit_temperature("f", z * 2.0, targets)  # logits twice too sharp -> T = 2
    assert cal.temperature == pytest.approx(2.0, rel=0.1)
    assert cal.fit["nll_calibrated"] < cal.fit["nll_raw"]
    assert fit_temperature("f", z, [np.array([], dtype=int)] * 3000).temperature == 1.0


def test_json_round_trip(tmp_path: Path) -> None:
    p, y, g = _miscalibrated(2000, 2)
    c = Calibration({"a": fit_binary("a", p, y, g, "isotonic"), "b": fit_binary("b", p, y, g, "platt"),
                     "f": fit_temperature("f", np.eye(3), [np.array([0])] * 3)})
    c.save(tmp_path)
    back = Calibration.load(tmp_path)
    assert back is not None and back.to_dict() == c.to_dict()
    for t in ("a", "b"):
        got, want = back.get(t), c.get(t)
        assert got is not None and want is not None
        assert np.array_equal(got.prob(p), want.prob(p))
    assert Calibration.load(tmp_path / "missing") is None
    assert TaskCalibration("t", "binary", [ProbMap()]).identity and not c.tasks["b"].identity
    assert not c.tasks["f"].identity or c.tasks["f"].temperature == 1.0
    bad = {"version": 1, "tasks": {"x": {"task": "x", "kind": "binary", "maps": [{"method": "magic"}]}}}
    (tmp_path / "calibration.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="task 'x': unknown method 'magic'"):
        Calibration.load(tmp_path)
