"""Forecasting (set targets, e.g. diagnosis codes at the next encounter): precision@k, recall@k and the
train-frequency baseline. k = 10 by default, as in Foresight."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from ehrfm.evaluate.bootstrap import DegenerateMetric, MetricFn, MetricValue, bootstrap_metrics


def hits_at_k(predicted: Sequence[str], targets: Iterable[str], k: int) -> int:
    """Number of distinct codes among the first k predictions that are in the targets."""
    return len(set(list(predicted)[:k]) & set(targets))


def precision_recall_at_k(
    predicted: Sequence[Sequence[str]], targets: Sequence[Iterable[str]], k: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: precision@k = hits / k and recall@k = hits / |targets| (NaN when targets are empty)."""
    prec = np.empty(len(predicted))
    rec = np.empty(len(predicted))
    for r, (pred, tgt) in enumerate(zip(predicted, targets, strict=True)):
        tset = set(tgt)
        h = hits_at_k(pred, tset, k)
        prec[r] = h / k
        rec[r] = h / len(tset) if tset else np.nan
    return prec, rec


def forecast_metrics(
    predicted: Sequence[Sequence[str]],
    targets: Sequence[Iterable[str]],
    groups: np.ndarray,
    k: int = 10,
    n_boot: int = 200,
    seed: int = 0,
) -> dict[str, MetricValue]:
    """Mean precision@k and recall@k (rows with empty targets excluded from recall), cluster-bootstrap CIs."""
    prec, rec = precision_recall_at_k(predicted, targets, k)

    def mean_of(a: np.ndarray, what: str) -> MetricFn:
        def fn(i: np.ndarray) -> float:
            v = a[i][~np.isnan(a[i])]
            if len(v) == 0:
                raise DegenerateMetric(f"no rows with {what}")
            return float(v.mean())

        return fn

    return bootstrap_metrics(
        {f"precision@{k}": mean_of(prec, "rows"), f"recall@{k}": mean_of(rec, "non-empty targets")},
        np.asarray(groups),
        n_boot=n_boot,
        seed=seed,
    )


def frequency_baseline(train_targets: Iterable[Iterable[str]], k: int = 10) -> list[str]:
    """The k target codes present in the most train rows (ties broken by code, for determinism)."""
    counts: Counter[str] = Counter()
    for tgt in train_targets:
        counts.update(set(tgt))
    return [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]
