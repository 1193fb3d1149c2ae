"""Cluster bootstrap over subjects and the ``MetricValue`` record (point estimate, 95% CI, reason).

Why a *cluster* bootstrap: a subject with several index events (e.g. several admissions) contributes
correlated rows; resampling rows would understate the variance. We resample SUBJECTS with replacement
and take all of a drawn subject's rows, once per draw.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# a metric maps row indices (into the caller's arrays) to a value, or raises DegenerateMetric
MetricFn = Callable[[np.ndarray], float]


class DegenerateMetric(ValueError):
    """Raised by a metric that is undefined on its input (e.g. AUROC with one class); carries the reason."""


@dataclass
class MetricValue:
    """One metric: point estimate, percentile 95% CI and, when undefined, the reason (value is NaN)."""

    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    n_boot: int = 0  # resamples on which the metric was defined
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN becomes None)."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}

    def fmt(self, digits: int = 3) -> str:
        """``0.812 (0.780–0.843)``, or ``NaN (reason)``."""
        if math.isnan(self.value):
            return f"NaN ({self.reason})" if self.reason else "NaN"
        if math.isnan(self.ci_low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} ({self.ci_low:.{digits}f}–{self.ci_high:.{digits}f})"


def cluster_resample_indices(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One cluster-bootstrap resample: row indices of ``len(unique(groups))`` subjects drawn with replacement.

    groups: (n_rows,) subject ids. Returns (m,) int indices; a subject drawn k times contributes all of its
    rows k times (m varies between resamples).
    """
    uniq, inverse = np.unique(groups, return_inverse=True)
    draws = np.bincount(rng.integers(0, len(uniq), size=len(uniq)), minlength=len(uniq))
    return np.repeat(np.arange(len(groups)), draws[inverse])


def safe_metric(fn: MetricFn, idx: np.ndarray) -> tuple[float, str | None]:
    """Evaluate ``fn`` on ``idx``; a DegenerateMetric or a non-finite result becomes (NaN, reason)."""
    try:
        value = float(fn(idx))
    except DegenerateMetric as e:
        return math.nan, str(e)
    if not math.isfinite(value):
        return math.nan, "metric not finite"
    return value, None


def bootstrap_metrics(
    metrics: dict[str, MetricFn],
    groups: np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, MetricValue]:
    """Point estimates on all rows plus cluster-bootstrap percentile CIs, the same resamples for every metric.

    metrics: name -> fn(row indices) -> float; groups: (n_rows,) subject ids. Resamples on which a metric
    is undefined are dropped for that metric (``n_boot`` counts the rest); a metric undefined on the full
    data is NaN with its reason and no CI. ``n_boot=0`` gives point estimates only.
    """
    all_idx = np.arange(len(groups))
    points = {name: safe_metric(fn, all_idx) for name, fn in metrics.items()}
    samples: dict[str, list[float]] = {name: [] for name in metrics}
    rng = np.random.default_rng(seed)
    for _ in range(n_boot if len(groups) else 0):
        idx = cluster_resample_indices(groups, rng)
        for name, fn in metrics.items():
            if math.isnan(points[name][0]):
                continue
            v, _ = safe_metric(fn, idx)
            if not math.isnan(v):
                samples[name].append(v)
    out: dict[str, MetricValue] = {}
    for name, (value, reason) in points.items():
        s = np.asarray(samples[name])
        if math.isnan(value) or len(s) == 0:
            out[name] = MetricValue(value, reason=reason)
            continue
        lo, hi = np.quantile(s, [alpha / 2, 1 - alpha / 2])
        out[name] = MetricValue(value, float(lo), float(hi), len(s), None)
    return out


def metric_table(values: Sequence[tuple[str, MetricValue]]) -> dict[str, dict[str, Any]]:
    """name -> JSON dict of a metric, for reports."""
    return {name: mv.to_dict() for name, mv in values}
