"""Numeric-value quantile bins per code, fitted on the TRAIN split only.

A code with enough numeric values on train gets ``n_bins - 1`` cut points at the quantiles
``1/n, 2/n, ..., (n-1)/n``, de-duplicated: exact with linear interpolation in the local engine
(:func:`fit_bins_pandas`, NumPy's definition), approximate in the Spark engine (:func:`fit_bins_spark`:
``percentile_approx``, an observed value within a stated rank error ``1/accuracy``, so that no code's
values are shuffled into one task). A value ``v`` falls in bin ``searchsorted(edges, v, "right")``,
so bins are ``0..len(edges)`` and a value equal to a cut point goes to the upper bin. Bin ``b`` becomes
the shared token ``[Q{b}]`` right after the code token (EHRMamba style: code token, then value token).

The same cut points also scale the exact value for the model's ``values`` stream
(:meth:`Bins.scaled_value`): ``(v - centre) / spread`` with the centre the median cut point and the spread
the distance between the outer cut points (the central ``1 - 2/n`` of train values), clipped to
``±VALUE_CLIP``. Bins alone lose what a trend is made of (with 20 bins, creatinine 1.32 and 1.45 share a
token); the scaled value keeps it, fitted on train only like the bins.

File format (``bins.json``)::

    {"format": "ehrfm-bins/1", "n_bins": 10, "min_count": 5, "edges": {"LAB//LOINC//2160-0": [0.7, ...]}}
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ehrfm.schema import CODE, NUMERIC_VALUE, SUBJECT_ID, TRAIN_SPLIT
from ehrfm.vocab import read_text, write_text

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkDataFrame

FORMAT = "ehrfm-bins/1"
# percentile_approx accuracy of the Spark fit (rank error 1/accuracy of a code's values; see fit_bins_spark)
DEFAULT_ACCURACY = 10_000
VALUE_CLIP = 8.0  # scaled values beyond ±8 spreads are clipped (a typo'd 1e6 must not dominate an embedding)


def bin_token(b: int) -> str:
    """The value-bin token of bin ``b`` (shared by all codes), e.g. ``[Q3]``."""
    return f"[Q{b}]"


def bin_tokens(n_bins: int) -> list[str]:
    """All value-bin tokens ``[Q0]..[Q{n_bins-1}]``."""
    return [bin_token(b) for b in range(n_bins)]


def quantile_levels(n_bins: int) -> list[float]:
    """The quantile levels of the cut points: ``k / n_bins`` for ``k = 1..n_bins-1``."""
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got {n_bins}")
    return [k / n_bins for k in range(1, n_bins)]


@dataclass
class Bins:
    """Cut points per code. ``bin_of(code, value)`` returns the bin index or ``None`` (no bins / no value)."""

    n_bins: int
    edges: dict[str, list[float]] = field(default_factory=dict)
    min_count: int = 0

    def __post_init__(self) -> None:
        self._arrays = {c: np.asarray(e, dtype=np.float64) for c, e in self.edges.items()}
        self._scales = {c: _centre_spread(a) for c, a in self._arrays.items() if a.size}

    def scaled_value(self, code: str, value: float | None) -> float:
        """``value`` of ``code`` as ``(v - centre) / spread`` from the code's cut points, clipped to
        ``±VALUE_CLIP``; NaN when the code has no bins or the value is missing/NaN/inf."""
        if value is None or not math.isfinite(value):
            return math.nan
        cs = self._scales.get(code)
        if cs is None:
            return math.nan
        return min(max((value - cs[0]) / cs[1], -VALUE_CLIP), VALUE_CLIP)

    def bin_of(self, code: str, value: float | None) -> int | None:
        """Bin index in ``0..n_bins-1`` of ``value`` for ``code``; ``None`` when the code has no bins or
        the value is missing/NaN/inf."""
        if value is None or not math.isfinite(value):
            return None
        arr = self._arrays.get(code)
        if arr is None:
            return None
        return int(np.searchsorted(arr, value, side="right"))

    def bins_of(self, code: str, values: np.ndarray) -> np.ndarray:
        """Vectorised :meth:`bin_of`: int64 array of the same shape, -1 where there is no bin."""
        out = np.full(values.shape, -1, dtype=np.int64)
        arr = self._arrays.get(code)
        if arr is None:
            return out
        ok = np.isfinite(values)
        out[ok] = np.searchsorted(arr, values[ok].astype(np.float64), side="right")
        return out

    def save(self, path: str | Path) -> None:
        """Write ``bins.json`` (codes sorted so the file is byte-identical for identical fits)."""
        data = {
            "format": FORMAT,
            "n_bins": self.n_bins,
            "min_count": self.min_count,
            "edges": {c: [float(x) for x in self.edges[c]] for c in sorted(self.edges)},
        }
        write_text(path, json.dumps(data, indent=0))


def _centre_spread(edges: np.ndarray) -> tuple[float, float]:
    """(median cut point, outer cut-point distance) of sorted ``edges``; the spread falls back to
    ``|centre|`` (or 1) when ties collapsed the cut points to one value."""
    centre = float(np.median(edges))
    spread = float(edges[-1] - edges[0])
    if not spread > 0:
        spread = abs(centre) if centre != 0 else 1.0
    return centre, spread


def load_bins(path: str | Path) -> Bins:
    """Read a ``bins.json`` written by :meth:`Bins.save` (a local path or URI)."""
    data = json.loads(read_text(path))
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: not an ehrfm bins file (format={data.get('format')!r}, want {FORMAT!r})")
    return Bins(n_bins=int(data["n_bins"]), edges=dict(data["edges"]),
                min_count=int(data.get("min_count", 0)))


def _clean_edges(values: list[float] | np.ndarray) -> list[float]:
    # Ties (e.g. many identical results) collapse cut points; unique() keeps them sorted.
    return [float(x) for x in np.unique(np.asarray(values, dtype=np.float64))]


def fit_bins_pandas(events: pd.DataFrame, splits: pd.DataFrame, n_bins: int = 10, min_count: int = 5) -> Bins:
    """Fit bins on the train-split rows of ``events`` (EVENTS_SCHEMA columns) in one process.

    ``splits`` has ``subject_id`` and ``split``. Only codes with at least ``min_count`` finite numeric
    values on train get bins. Reference twin of :func:`fit_bins_spark` (tests compare the two).
    """
    levels = quantile_levels(n_bins)
    train_ids = splits.loc[splits["split"] == TRAIN_SPLIT, SUBJECT_ID]
    ev = events.loc[events[SUBJECT_ID].isin(train_ids), [CODE, NUMERIC_VALUE]]
    vals = ev[NUMERIC_VALUE].astype("float64")
    ev = ev.assign(**{NUMERIC_VALUE: vals})[np.isfinite(vals.to_numpy())]
    edges: dict[str, list[float]] = {}
    for code, grp in ev.groupby(CODE, sort=True):
        v = grp[NUMERIC_VALUE].to_numpy()
        if len(v) >= min_count:
            edges[str(code)] = _clean_edges(np.quantile(v, levels, method="linear"))
    return Bins(n_bins=n_bins, edges=edges, min_count=min_count)


def fit_bins_spark(
    events: SparkDataFrame, splits: SparkDataFrame, n_bins: int = 10, min_count: int = 5,
    accuracy: int = DEFAULT_ACCURACY,
) -> Bins:
    """Fit bins with Spark: ``percentile_approx`` per code over train-split finite numeric values.

    Approximate on purpose: the exact ``percentile`` gathers every value of a code into one task (a shuffle
    of all values, and one task holding the most frequent lab's values), while ``percentile_approx`` merges
    small per-partition sketches. The error is stated: each cut point at level ``q`` is a value of the data
    whose rank lies within ``n / accuracy`` of ``q * n`` (``n`` the code's train values; rank error
    ``1 / accuracy``), and it is an observed value (no interpolation between neighbours, unlike
    :func:`fit_bins_pandas`). With the default accuracy 10,000 the rank error is 0.01 % of a code's values,
    far inside one bin of 1/n_bins. Within that bound a cut point may depend on how the values are
    partitioned (the sketches merge in shuffle order), so two clusters may write different ``bins.json``
    for a code with many values; tokens built from one ``bins.json`` are identical in both engines. Only the
    per-code cut points reach the driver.
    """
    from pyspark.sql import functions as F

    if accuracy < 1:
        raise ValueError(f"accuracy must be >= 1, got {accuracy}")
    levels = quantile_levels(n_bins)
    train = splits.where(F.col("split") == TRAIN_SPLIT).select(SUBJECT_ID)
    v = F.col(NUMERIC_VALUE).cast("double")
    ev = (
        events.join(train, on=SUBJECT_ID, how="left_semi")
        .select(CODE, v.alias("v"))
        .where(F.col("v").isNotNull() & ~F.isnan("v") & (F.abs("v") != float("inf")))
    )
    agg = ev.groupBy(CODE).agg(
        F.count("v").alias("n"),
        F.percentile_approx("v", F.array(*[F.lit(q) for q in levels]), accuracy).alias("q"),
    )
    rows = agg.where(F.col("n") >= min_count).collect()
    edges = {str(r[CODE]): _clean_edges(list(r["q"])) for r in rows}
    return Bins(n_bins=n_bins, edges=edges, min_count=min_count)
