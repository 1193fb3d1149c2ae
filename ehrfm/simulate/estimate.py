"""From simulated futures to a risk per row: the share of futures with the outcome, a Monte-Carlo interval,
and for time-to-event tasks the empirical survival curve of the futures.

Denominator: every future except those excluded by the task (a death under ``censoring.death: exclude``)
and, with ``truncated="exclude"``, those that hit ``max_steps`` undecided. With ``truncated="negative"`` (the
default) a truncated future counts as one without the outcome: nothing in the part that was generated reached
it, so the estimate is a lower bound when futures are truncated, and the count is reported beside it
(``n_truncated``). A row whose denominator is 0 gets 0.5 with the interval [0, 1] (no information).

Interval: Jeffreys (the equal-tailed interval of the Beta(k + 1/2, n - k + 1/2) posterior; lower end 0 when
k = 0, upper end 1 when k = n), which keeps close to its nominal coverage for small n and extreme shares,
where the Wald interval collapses — at M = 8 both matter. It is the Monte-Carlo uncertainty of the share for
*this model's* futures, not a confidence interval of the patient's true risk.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import beta

from ehrfm.simulate.futures import EXCLUDED, POSITIVE, TRUNCATED, FutureOutcomes

TRUNCATED_POLICIES = ("negative", "exclude")


def jeffreys_interval(k: np.ndarray, n: np.ndarray, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Equal-tailed Jeffreys interval of a binomial share ``k / n`` (arrays); [0, 1] where ``n`` is 0."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    a = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        lo = np.where(k > 0, beta.ppf(a, k + 0.5, n - k + 0.5), 0.0)
        hi = np.where(k < n, beta.ppf(1.0 - a, k + 0.5, n - k + 0.5), 1.0)
    empty = n <= 0
    return np.where(empty, 0.0, lo), np.where(empty, 1.0, hi)


def counts(outcomes: FutureOutcomes, truncated: str = "negative") -> tuple[np.ndarray, np.ndarray]:
    """(positives, denominator) per row (R,) under the ``truncated`` policy (see the module docstring)."""
    if truncated not in TRUNCATED_POLICIES:
        raise ValueError(f"truncated={truncated!r}: must be one of {list(TRUNCATED_POLICIES)}")
    o = outcomes.outcome.numpy()
    k = (o == POSITIVE).sum(1)
    out = (o == EXCLUDED) | ((o == TRUNCATED) if truncated == "exclude" else False)
    return k, (~out).sum(1)


def binary_columns(outcomes: FutureOutcomes, truncated: str = "negative", level: float = 0.95
                   ) -> dict[str, list[Any]]:
    """Prediction columns of a binary task: ``prob`` with ``prob_ci_low`` / ``prob_ci_high`` and the future
    counts (``n_futures`` in the denominator, ``n_positive``, ``n_truncated``, ``mean_steps``)."""
    k, n = counts(outcomes, truncated)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.where(n > 0, k / np.maximum(n, 1), 0.5)
    lo, hi = jeffreys_interval(k, n, level)
    return {"prob": p.tolist(), "prob_ci_low": lo.tolist(), "prob_ci_high": hi.tolist(),
            **_diagnostics(outcomes, k, n)}


def tte_columns(outcomes: FutureOutcomes, horizon_days: float, truncated: str = "negative",
                level: float = 0.95, grid_points: int = 12) -> dict[str, list[Any]]:
    """Prediction columns of a time-to-event task: ``risk`` = share of futures with the event by the horizon
    (with ``risk_ci_low`` / ``risk_ci_high``), ``survival`` = 1 - the share with the event by each of
    ``times_days`` (``grid_points`` equal steps up to the horizon), and the future counts."""
    k, n = counts(outcomes, truncated)
    grid = np.linspace(0.0, horizon_days, grid_points + 1)[1:]
    days = outcomes.event_days.numpy()
    pos = outcomes.outcome.numpy() == POSITIVE
    by_t = np.stack([(pos & (days <= t)).sum(1) for t in grid], axis=1)  # (R, grid)
    with np.errstate(invalid="ignore", divide="ignore"):
        surv = np.where(n[:, None] > 0, 1.0 - by_t / np.maximum(n, 1)[:, None], 0.5)
        risk = np.where(n > 0, k / np.maximum(n, 1), 0.5)
    lo, hi = jeffreys_interval(k, n, level)
    return {"risk": risk.tolist(), "risk_ci_low": lo.tolist(), "risk_ci_high": hi.tolist(),
            "survival": surv.tolist(), "times_days": [grid.tolist()] * len(k), **_diagnostics(outcomes, k, n)}


def _diagnostics(outcomes: FutureOutcomes, k: np.ndarray, n: np.ndarray) -> dict[str, list[Any]]:
    o = outcomes.outcome.numpy()
    return {"n_futures": n.astype(int).tolist(), "n_positive": k.astype(int).tolist(),
            "n_truncated": (o == TRUNCATED).sum(1).astype(int).tolist(),
            "mean_steps": outcomes.steps.numpy().mean(1).tolist()}
