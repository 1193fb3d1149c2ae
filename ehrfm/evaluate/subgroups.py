"""Subgroup attributes at prediction time and per-subgroup metric tables.

Attributes (docs/CONVENTIONS.md): sex from ``GENDER//``, age band at prediction_time from ``MEDS_BIRTH``
(<40, 40-64, 65-79, 80+), and race / ethnicity / insurance / site from ``RACE//``, ``ETHNICITY//``,
``INSURANCE//``, ``SITE//`` codes — the LAST such code at or before prediction_time (static codes, with a
null time, count as before). An attribute absent from the whole dataset is omitted; a row without a
value gets ``unknown``. Groups smaller than ``min_n`` rows or ``min_pos`` positives are flagged ``tiny``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from ehrfm.evaluate.bootstrap import MetricValue
from ehrfm.evaluate.features import age_years, last_at_or_before
from ehrfm.schema import BIRTH_CODE

ATTRIBUTE_PREFIXES: dict[str, str] = {
    "sex": "GENDER//",
    "race": "RACE//",
    "ethnicity": "ETHNICITY//",
    "insurance": "INSURANCE//",
    "site": "SITE//",
}
AGE_BANDS: list[tuple[float, float, str]] = [(-np.inf, 40, "<40"), (40, 65, "40-64"), (65, 80, "65-79"),
                                             (80, np.inf, "80+")]
SUBGROUP_CODE_PREFIXES = [BIRTH_CODE, *ATTRIBUTE_PREFIXES.values()]  # what to read from the events


def age_band(age_years: float) -> str:
    """The age band of an age in years (``unknown`` for NaN)."""
    if not np.isfinite(age_years):
        return "unknown"
    return next(name for lo, hi, name in AGE_BANDS if lo <= age_years < hi)


def subgroup_attributes(events: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    """(len(rows), k) string attributes per label row: age_band plus whichever of ATTRIBUTE_PREFIXES exist.

    events: at least subject_id, time, code (demographic codes suffice); rows: subject_id, prediction_time.
    """
    rows = rows.reset_index(drop=True)
    out = pd.DataFrame({"age_band": [age_band(float(a)) for a in age_years(events, rows)]})
    for name, prefix in ATTRIBUTE_PREFIXES.items():
        vals = last_at_or_before(events, rows, prefix)
        if vals is not None:
            out[name] = vals["value"].fillna("unknown").to_numpy()
    return out


def subgroup_table(
    attrs: pd.DataFrame,
    groups: np.ndarray,
    positives: np.ndarray | None,
    compute: Callable[[np.ndarray], dict[str, MetricValue]],
    min_n: int = 50,
    min_pos: int = 10,
) -> list[dict[str, Any]]:
    """One row per (attribute, value): n, subjects, positives, tiny flag and ``compute(row indices)`` metrics.

    attrs: (n, k) from ``subgroup_attributes`` aligned with the evaluated rows; groups: (n,) subject ids;
    positives: (n,) 0/1 (binary labels or TTE events) or None.
    """
    table: list[dict[str, Any]] = []
    for attr in attrs.columns:
        values = attrs[attr].to_numpy()
        order = [b[2] for b in AGE_BANDS] + ["unknown"] if attr == "age_band" else None
        for value in sorted(pd.unique(values), key=lambda v: order.index(v) if order else str(v)):
            idx = np.flatnonzero(values == value)
            n_pos = int(np.sum(positives[idx])) if positives is not None else None
            tiny = len(idx) < min_n or (n_pos is not None and min(n_pos, len(idx) - n_pos) < min_pos)
            table.append(
                {
                    "attribute": attr,
                    "group": str(value),
                    "n": int(len(idx)),
                    "subjects": int(len(np.unique(groups[idx]))),
                    "positives": n_pos,
                    "tiny": bool(tiny),
                    "metrics": {k: v.to_dict() for k, v in compute(idx).items()},
                }
            )
    return table
