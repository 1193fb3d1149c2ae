"""Time-to-event metrics (scikit-survival): Harrell's C, Uno's C, cumulative/dynamic AUC, integrated Brier.

Requirements of ``sksurv.metrics`` that shape this module:
- survival data are structured arrays (``sksurv.util.Surv.from_arrays(event, time)``);
- IPCW-based metrics (Uno's C, time-dependent AUC, IBS) estimate the censoring distribution on the TRAIN
  labels, so evaluation times must lie inside the train follow-up range and inside the test follow-up
  range; ``valid_times`` clips requested horizons accordingly (dropped horizons are reported).
Predicted survival is given on a grid ``times_days``; ``survival_at`` reads it as a right-continuous step
function (S = 1 before the first grid time).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
from sksurv.metrics import (
    concordance_index_censored,
    concordance_index_ipcw,
    cumulative_dynamic_auc,
    integrated_brier_score,
)
from sksurv.nonparametric import kaplan_meier_estimator
from sksurv.util import Surv

from ehrfm.evaluate.bootstrap import DegenerateMetric, MetricFn, MetricValue, bootstrap_metrics


def surv_array(event: np.ndarray, duration: np.ndarray) -> np.ndarray:
    """Structured (event: bool, time: float) array as sksurv expects; durations must be finite and >= 0."""
    duration = np.asarray(duration, dtype=float)
    bad = np.flatnonzero(~np.isfinite(duration) | (duration < 0))
    if len(bad):
        raise ValueError(f"field 'duration_days': row {int(bad[0])} has {duration[bad[0]]!r}, expected >= 0")
    return cast(np.ndarray, Surv.from_arrays(event=np.asarray(event).astype(bool), time=duration))


def survival_at(surv: np.ndarray, grid: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Step-function lookup. surv: (n, g) S(grid); grid: (g,) increasing days; times: (t,) -> (n, t)."""
    pos = np.searchsorted(grid, times, side="right") - 1  # last grid point <= t
    padded = np.concatenate([np.ones((surv.shape[0], 1)), surv], axis=1)
    return padded[:, pos + 1]


def risk_from_survival(surv: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Scalar risk for concordance: minus the restricted mean survival time over the grid. (n, g) -> (n,)."""
    widths = np.diff(np.concatenate([[0.0], grid]))
    return cast(np.ndarray, -(surv * widths).sum(axis=1))


def valid_times(train: np.ndarray, test: np.ndarray,
                requested: Sequence[float]) -> tuple[np.ndarray, list[float]]:
    """Horizons usable by IPCW metrics: inside [min test time, max test time) and < max train time.

    Returns (kept sorted unique times, dropped times)."""
    lo = float(test["time"].min())
    hi = min(float(test["time"].max()), float(train["time"].max()))
    req = sorted({float(t) for t in requested})  # duplicates (few distinct event times) break IBS
    kept = [t for t in req if lo <= t < hi]
    return np.asarray(kept, dtype=float), [t for t in req if t not in kept]


def default_horizons(test: np.ndarray, quantiles: Sequence[float] = (0.25, 0.5, 0.75)) -> list[float]:
    """Horizons at quantiles of the observed event times of the test set (of all times if no events)."""
    t = test["time"][test["event"]] if test["event"].any() else test["time"]
    return [float(np.quantile(t, q)) for q in quantiles]


def harrell_c(event: np.ndarray, duration: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's concordance index (higher risk should fail earlier)."""
    if len(event) < 2:
        raise DegenerateMetric("fewer than two rows")
    if not np.asarray(event).astype(bool).any():
        raise DegenerateMetric("no events")
    try:
        return float(concordance_index_censored(np.asarray(event).astype(bool), duration, risk)[0])
    except (ZeroDivisionError, ValueError) as e:  # sksurv: "no comparable pairs" and input checks
        raise DegenerateMetric(f"sksurv: {e}") from e


def tte_metrics(
    train: np.ndarray,
    event: np.ndarray,
    duration: np.ndarray,
    groups: np.ndarray,
    risk: np.ndarray,
    surv: np.ndarray | None = None,
    grid: np.ndarray | None = None,
    horizons: Sequence[float] | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> tuple[dict[str, MetricValue], list[float]]:
    """Harrell's C, Uno's C, time-dependent AUC per horizon and (with ``surv``) integrated Brier score.

    train: structured survival array of the train split (censoring model); event, duration, groups, risk:
    (n,) for the evaluated rows; surv: (n, g) predicted S on ``grid`` (g,). Returns (metrics, horizons used).
    Keys: harrell_c, uno_c, auc@<h>d for each horizon, mean_auc, ibs.
    """
    test = surv_array(event, duration)
    hs, _dropped = valid_times(train, test, horizons if horizons is not None else default_horizons(test))
    tau = float(hs.max()) if len(hs) else None
    # per-horizon risk: 1 - S(h) when a survival curve is given (the cumulative/dynamic AUC's natural score)
    risk_t = 1 - survival_at(surv, grid, hs) if surv is not None and grid is not None else None

    def ipcw(fn: MetricFn) -> MetricFn:
        def wrapped(i: np.ndarray) -> float:
            if not test["event"][i].any():
                raise DegenerateMetric("no events")
            if len(hs) == 0:
                raise DegenerateMetric("no horizon inside the follow-up range")
            try:
                return fn(i)
            except DegenerateMetric:
                raise
            except (ValueError, ZeroDivisionError) as e:  # sksurv raises ValueError on out-of-range times
                raise DegenerateMetric(f"sksurv: {e}") from e

        return wrapped

    def auc_at(k: int) -> MetricFn:
        def fn(i: np.ndarray) -> float:
            sub = test[i]
            if not (sub["time"].min() <= hs[k] < sub["time"].max()):
                raise DegenerateMetric("horizon outside the resample's follow-up")
            est = risk_t[i][:, [k]] if risk_t is not None else risk[i]
            return float(cumulative_dynamic_auc(train, sub, est, hs[k : k + 1])[0][0])

        return fn

    def mean_auc(i: np.ndarray) -> float:
        sub = test[i]
        ok = (hs >= sub["time"].min()) & (hs < sub["time"].max())
        if not ok.any():
            raise DegenerateMetric("no horizon inside the resample's follow-up")
        est = risk_t[i][:, ok] if risk_t is not None else risk[i]
        return float(cumulative_dynamic_auc(train, sub, est, hs[ok])[1])

    def ibs(i: np.ndarray) -> float:
        sub = test[i]
        ok = (hs >= sub["time"].min()) & (hs < sub["time"].max())
        if ok.sum() < 2:
            raise DegenerateMetric("IBS needs two horizons inside the follow-up")
        assert surv is not None and grid is not None
        return float(integrated_brier_score(train, sub, survival_at(surv[i], grid, hs[ok]), hs[ok]))

    metrics: dict[str, MetricFn] = {
        "harrell_c": lambda i: harrell_c(test["event"][i], test["time"][i], risk[i]),
        "uno_c": ipcw(lambda i: float(concordance_index_ipcw(train, test[i], risk[i], tau=tau)[0])),
    }
    for k, h in enumerate(hs):
        metrics[f"auc@{h:g}d"] = ipcw(auc_at(k))
    metrics["mean_auc"] = ipcw(mean_auc)
    if surv is not None:
        metrics["ibs"] = ipcw(ibs)
    return bootstrap_metrics(metrics, np.asarray(groups), n_boot=n_boot, seed=seed), [float(h) for h in hs]


def kaplan_meier(event: np.ndarray, duration: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Kaplan–Meier estimate: (times (k,), S(t) (k,)) at the distinct observed times."""
    t, s = kaplan_meier_estimator(np.asarray(event).astype(bool), np.asarray(duration, dtype=float))
    return np.asarray(t), np.asarray(s)
