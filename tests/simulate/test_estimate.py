"""The risk estimate: the Jeffreys interval keeps near its nominal coverage where the Wald interval does not
(exact binomial sums, no simulation), the share's denominator follows the truncation and death policies, and
the time-to-event columns are a survival curve that ends at 1 - risk."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import binom

from ehrfm.simulate.estimate import binary_columns, counts, jeffreys_interval, tte_columns
from ehrfm.simulate.futures import EXCLUDED, NEGATIVE, POSITIVE, TRUNCATED, FutureOutcomes


def _coverage(lo: np.ndarray, hi: np.ndarray, n: int, p: float) -> float:
    k = np.arange(n + 1)
    return float(binom.pmf(k, n, p)[(lo <= p) & (p <= hi)].sum())


def test_jeffreys_coverage_at_small_m() -> None:
    for n in (8, 32, 128):
        k = np.arange(n + 1)
        lo, hi = jeffreys_interval(k, np.full(n + 1, n))
        assert lo[0] == 0.0 and hi[-1] == 1.0 and bool(np.all(lo <= k / n)) and bool(np.all(k / n <= hi))
        cov = [_coverage(lo, hi, n, p) for p in np.linspace(0.05, 0.95, 37)]
        assert np.mean(cov) > 0.93 and min(cov) > 0.85, (n, np.mean(cov), min(cov))
        # the Wald interval collapses at extreme shares: Jeffreys is far better there
        se = np.sqrt(k / n * (1 - k / n) / n)
        wald = _coverage(k / n - 1.96 * se, k / n + 1.96 * se, n, 0.05)
        assert _coverage(lo, hi, n, 0.05) > wald + 0.03
    lo, hi = jeffreys_interval(np.array([0]), np.array([0]))
    assert (lo[0], hi[0]) == (0.0, 1.0)


def _outcomes(rows: list[list[int]], days: list[list[float]] | None = None) -> FutureOutcomes:
    o = torch.tensor(rows, dtype=torch.int8)
    nan = torch.full(o.shape, float("nan"), dtype=torch.float64)
    d = torch.tensor(days, dtype=torch.float64) if days else nan
    return FutureOutcomes(o, d, torch.ones(o.shape, dtype=torch.long))


def test_denominator_policies() -> None:
    out = _outcomes([[POSITIVE, NEGATIVE, TRUNCATED, EXCLUDED], [POSITIVE, POSITIVE, NEGATIVE, NEGATIVE]])
    k, n = counts(out, "negative")
    assert k.tolist() == [1, 2] and n.tolist() == [3, 4]  # an excluded death never counts
    k, n = counts(out, "exclude")
    assert n.tolist() == [2, 4]
    cols = binary_columns(out, "exclude")
    assert cols["prob"] == [0.5, 0.5] and cols["n_truncated"] == [1, 0] and cols["n_positive"] == [1, 2]
    assert all(lo < p < hi for lo, p, hi in zip(cols["prob_ci_low"], cols["prob"], cols["prob_ci_high"],
                                                strict=True))


def test_tte_columns_are_a_survival_curve() -> None:
    out = _outcomes([[POSITIVE, POSITIVE, NEGATIVE, NEGATIVE]], [[10.0, 200.0, float("nan"), float("nan")]])
    cols = tte_columns(out, 365.0, grid_points=4)
    assert cols["times_days"][0] == [91.25, 182.5, 273.75, 365.0]
    assert cols["survival"][0] == [0.75, 0.75, 0.5, 0.5] and cols["risk"] == [0.5]
