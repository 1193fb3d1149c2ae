"""Deterministic subject splits (train / tuning / held_out) by hashing the subject id.

One hash, three engines that agree bit for bit:

- :func:`assign_split` — pure Python, for one subject (serving, tests);
- :func:`assign_splits` — vectorized numpy over an int64 array;
- :func:`split_column` — a Spark column expression (no Python UDF).

The hash is Spark's own ``xxhash64(subject_id, seed)`` (XXH64 over 8-byte longs, chained from Spark's
default seed 42), re-implemented here in Python/numpy. Using a function Spark already ships means the
population job needs no UDF, and re-implementing it means the same split is available without Spark.
The top 53 bits of the unsigned hash become a uniform double ``u`` in [0, 1); the subject lands in the
first split whose cumulative ratio exceeds ``u``. A subject's split therefore depends only on its id, the
seed and the ratios — never on which other subjects are present, the partitioning or the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ehrfm.schema import SPLITS

if TYPE_CHECKING:
    from pyspark.sql import Column

DEFAULT_RATIOS: tuple[float, float, float] = (0.8, 0.1, 0.1)

_MASK = (1 << 64) - 1
_P1 = 0x9E3779B185EBCA87
_P2 = 0xC2B2AE3D27D4EB4F
_P3 = 0x165667B19E3779F9
_P4 = 0x85EBCA77C2B2AE63
_P5 = 0x27D4EB2F165667C5
_SPARK_SEED = 42  # Spark's xxhash64 starts every row from seed 42
_TWO_53 = float(1 << 53)


def validate_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    """Check that ``ratios`` are three non-negative numbers summing to 1 (±1e-6); return them as a tuple."""
    if len(ratios) != len(SPLITS):
        raise ValueError(f"split ratios: expected {len(SPLITS)} values for {SPLITS}, got {list(ratios)}")
    vals = tuple(float(r) for r in ratios)
    if any(not np.isfinite(r) or r < 0 for r in vals):
        raise ValueError(f"split ratios must be finite and >= 0, got {list(ratios)}")
    if abs(sum(vals) - 1.0) > 1e-6:
        raise ValueError(f"split ratios must sum to 1, got {list(ratios)} (sum {sum(vals)})")
    return vals[0], vals[1], vals[2]


def parse_ratios(text: str) -> tuple[float, float, float]:
    """Parse ``"0.8,0.1,0.1"`` into validated ratios (for CLIs)."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError as e:
        raise ValueError(f"--split-ratios: expected three comma-separated numbers, got {text!r}") from e
    return validate_ratios(parts)


def _thresholds(ratios: Sequence[float]) -> tuple[float, float]:
    r = validate_ratios(ratios)
    return r[0], r[0] + r[1]


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & _MASK


def _hash_long(value: int, seed: int) -> int:
    """Spark's ``XXH64.hashLong`` on unsigned 64-bit ints."""
    h = (seed + _P5 + 8) & _MASK
    h ^= (_rotl((value * _P2) & _MASK, 31) * _P1) & _MASK
    h = (_rotl(h, 27) * _P1 + _P4) & _MASK
    h ^= h >> 33
    h = (h * _P2) & _MASK
    h ^= h >> 29
    h = (h * _P3) & _MASK
    h ^= h >> 32
    return h


def split_hash(subject_id: int, seed: int = 0) -> int:
    """Unsigned 64-bit hash equal to Spark's ``xxhash64(subject_id, seed)`` (both as bigint) mod 2**64."""
    return _hash_long(int(seed) & _MASK, _hash_long(int(subject_id) & _MASK, _SPARK_SEED))


def assign_split(subject_id: int, ratios: Sequence[float] = DEFAULT_RATIOS, seed: int = 0) -> str:
    """The split (``train``/``tuning``/``held_out``) of one subject; stable across runs and engines."""
    t0, t1 = _thresholds(ratios)
    u = (split_hash(subject_id, seed) >> 11) / _TWO_53
    return SPLITS[0] if u < t0 else SPLITS[1] if u < t1 else SPLITS[2]


def _np_rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


def _np_hash_long(value: np.ndarray, seed: np.ndarray) -> np.ndarray:
    p1, p2, p3, p4 = (np.uint64(p) for p in (_P1, _P2, _P3, _P4))
    h = seed + np.uint64((_P5 + 8) & _MASK)
    h ^= _np_rotl(value * p2, 31) * p1
    h = _np_rotl(h, 27) * p1 + p4
    h ^= h >> np.uint64(33)
    h *= p2
    h ^= h >> np.uint64(29)
    h *= p3
    h ^= h >> np.uint64(32)
    return h


def assign_splits(subject_ids: np.ndarray, ratios: Sequence[float] = DEFAULT_RATIOS,
                  seed: int = 0) -> np.ndarray:
    """Vectorized :func:`assign_split`: int64 array of shape (n,) -> object array of split names, shape
    (n,)."""
    t0, t1 = _thresholds(ratios)
    ids = np.asarray(subject_ids, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2**64 by design
        base = np.full(ids.shape, _SPARK_SEED, dtype=np.uint64)
        # Spark chains columns: hash(seed_col, hash(subject_id, 42))
        h = _np_hash_long(np.full(ids.shape, int(seed) & _MASK, dtype=np.uint64), _np_hash_long(ids, base))
    u = (h >> np.uint64(11)).astype(np.float64) / _TWO_53
    out = np.where(u < t0, SPLITS[0], np.where(u < t1, SPLITS[1], SPLITS[2]))
    return out.astype(object)


def split_column(subject_col: str | Column = "subject_id", ratios: Sequence[float] = DEFAULT_RATIOS,
                 seed: int = 0) -> Column:
    """Spark column expression giving the split of ``subject_col`` (cast to bigint); no UDF involved."""
    from pyspark.sql import functions as F

    t0, t1 = _thresholds(ratios)
    col = F.col(subject_col) if isinstance(subject_col, str) else subject_col
    h = F.xxhash64(col.cast("bigint"), F.lit(int(seed)).cast("bigint"))
    u = F.shiftrightunsigned(h, 11).cast("double") / F.lit(_TWO_53)
    return F.when(u < F.lit(t0), SPLITS[0]).when(u < F.lit(t1), SPLITS[1]).otherwise(SPLITS[2])
