"""Binary-task metrics: AUROC, AUPRC, F1 / sensitivity / specificity / PPV at a threshold, Brier, ECE.

Thresholds are chosen on the TUNING split (``choose_threshold``) and applied unchanged to held-out data.
ECE uses equal-mass bins (each bin holds ~n/n_bins predictions, sorted by probability) because with
skewed clinical prevalences equal-width bins leave most bins empty and the top bins tiny.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ehrfm.config.evaluate import ThresholdRule
from ehrfm.evaluate.bootstrap import DegenerateMetric, MetricFn, MetricValue, bootstrap_metrics

__all__ = ["ThresholdRule", "auprc", "auroc", "binary_metrics", "brier", "choose_threshold", "confusion_at",
           "ece", "equal_mass_bins", "reliability_curve"]


def _check_two_classes(y: np.ndarray) -> None:
    if len(y) == 0:
        raise DegenerateMetric("no rows")
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise DegenerateMetric("only one class present")


def auroc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve. y: (n,) 0/1, p: (n,) scores. Raises DegenerateMetric with one class."""
    _check_two_classes(y)
    return float(roc_auc_score(y, p))


def auprc(y: np.ndarray, p: np.ndarray) -> float:
    """Average precision (step-wise area under the precision-recall curve; compare with the prevalence)."""
    _check_two_classes(y)
    return float(average_precision_score(y, p))


def brier(y: np.ndarray, p: np.ndarray) -> float:
    """Mean squared error of probabilities: mean((p - y)^2)."""
    if len(y) == 0:
        raise DegenerateMetric("no rows")
    return float(np.mean((p - y) ** 2))


def equal_mass_bins(p: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Row indices of ``min(n_bins, n)`` bins of (near) equal size after sorting by p (ties kept stable)."""
    order = np.argsort(p, kind="stable")
    return [b for b in np.array_split(order, min(n_bins, len(p))) if len(b)]


def ece(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error with equal-mass bins: sum_b (n_b / n) * |mean(y_b) - mean(p_b)|."""
    if len(y) == 0:
        raise DegenerateMetric("no rows")
    return float(sum(len(b) / len(y) * abs(y[b].mean() - p[b].mean()) for b in equal_mass_bins(p, n_bins)))


def reliability_curve(y: np.ndarray, p: np.ndarray, n_bins: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(mean predicted, observed rate) per equal-mass bin, each (n_bins,), for reliability diagrams."""
    bins = equal_mass_bins(p, n_bins)
    return np.array([p[b].mean() for b in bins]), np.array([y[b].mean() for b in bins])


def confusion_at(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity, specificity, PPV and F1 of the rule ``p >= threshold`` (NaN where a ratio is 0/0)."""
    pred = p >= threshold
    tp = float(np.sum(pred & (y == 1)))
    fp = float(np.sum(pred & (y == 0)))
    fn = float(np.sum(~pred & (y == 1)))
    tn = float(np.sum(~pred & (y == 0)))

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    return {
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


def choose_threshold(y: np.ndarray, p: np.ndarray, rule: ThresholdRule = "youden",
                     fixed: float = 0.5) -> float:
    """A decision threshold chosen on (tuning-split) y, p.

    ``youden``: maximizes sensitivity + specificity - 1 over ROC thresholds; ``max_f1``: maximizes F1 over
    the distinct scores; ``fixed``: returns ``fixed``. Falls back to ``fixed`` when y has one class.
    """
    if rule == "fixed" or len(y) == 0 or y.min() == y.max():
        return float(fixed)
    if rule == "youden":
        fpr, tpr, thr = roc_curve(y, p)
        best = int(np.argmax(tpr - fpr))
        return float(min(thr[best], 1.0)) if np.isfinite(thr[best]) else float(fixed)
    if rule == "max_f1":
        cands = np.unique(p)
        f1s = [confusion_at(y, p, t)["f1"] for t in cands]
        return float(cands[int(np.nanargmax(f1s))])
    raise ValueError(f"unknown threshold rule {rule!r} (use youden, max_f1 or fixed)")


def binary_metrics(
    y: np.ndarray,
    p: np.ndarray,
    groups: np.ndarray,
    threshold: float,
    n_boot: int = 200,
    seed: int = 0,
    n_bins: int = 10,
) -> dict[str, MetricValue]:
    """All binary metrics with subject-cluster bootstrap CIs.

    y: (n,) 0/1 labels; p: (n,) probabilities in [0, 1]; groups: (n,) subject ids; threshold: from
    ``choose_threshold`` on the tuning split. Keys: auroc, auprc, prevalence, brier, ece, sensitivity,
    specificity, ppv, f1 (the last four at ``threshold``).
    """
    y = np.asarray(y, dtype=float)
    p = np.asarray(p, dtype=float)
    if len(y) != len(p) or len(y) != len(groups):
        raise ValueError(f"length mismatch: y {len(y)}, p {len(p)}, groups {len(groups)}")
    bad = np.flatnonzero(~np.isfinite(p) | (p < 0) | (p > 1))
    if len(bad):
        raise ValueError(f"field 'prob': row {int(bad[0])} has value {p[bad[0]]!r}, expected a probability "
                         "in [0, 1]")

    def at(key: str) -> MetricFn:
        def fn(i: np.ndarray) -> float:
            if len(i) == 0:
                raise DegenerateMetric("no rows")
            v = confusion_at(y[i], p[i], threshold)[key]
            if np.isnan(v):
                raise DegenerateMetric(f"{key} undefined (empty denominator)")
            return v

        return fn

    metrics: dict[str, MetricFn] = {
        "auroc": lambda i: auroc(y[i], p[i]),
        "auprc": lambda i: auprc(y[i], p[i]),
        "prevalence": lambda i: brier(y[i], np.zeros(len(i))),  # mean(y^2) = mean(y) for 0/1 labels
        "brier": lambda i: brier(y[i], p[i]),
        "ece": lambda i: ece(y[i], p[i], n_bins),
        **{k: at(k) for k in ("sensitivity", "specificity", "ppv", "f1")},
    }
    return bootstrap_metrics(metrics, np.asarray(groups), n_boot=n_boot, seed=seed)
