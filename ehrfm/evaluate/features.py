"""Count features for the supervised baselines: per-code event counts in time windows ending at
``prediction_time`` (inclusive; NOTHING after it), plus age and sex.

How it stays fast: events are sorted by (subject, time) once; for each label row and window the events
in ``[prediction_time - w, prediction_time]`` are then one contiguous slice of that array, located with two
``merge_asof`` joins; the slices become a sparse (rows x codes) count matrix in one ``coo_matrix`` call.
Static events (null time) count in the all-history window only. The code vocabulary is fitted on TRAIN
rows only: codes present in the history of at least ``min_count`` train rows, the ``max_codes`` most common.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ehrfm.schema import BIRTH_CODE, PREDICTION_TIME, SUBJECT_ID

STATIC_TIME = np.iinfo(np.int64).min // 2  # sorts before every real time; never inside a finite window
DAY_US = 86_400 * 1_000_000


def _us(s: pd.Series) -> np.ndarray:
    """Timestamps as int64 microseconds (NaT -> STATIC_TIME)."""
    t = pd.to_datetime(s).astype("datetime64[us]")
    out = t.to_numpy().astype("int64")
    out[t.isna().to_numpy()] = STATIC_TIME
    return out


@dataclass
class SortedEvents:
    """Events sorted by (subject, time): subject (m,), time_us (m,), code index (m,) into ``codes``."""

    subject: np.ndarray
    time_us: np.ndarray
    code_idx: np.ndarray
    codes: list[str]
    _by_time: pd.DataFrame | None = None  # (s, t, pos) sorted by t, built once for every merge_asof

    def by_time(self) -> pd.DataFrame:
        """Events as DataFrame(s, t, pos) sorted by time (pos = index in the subject-sorted arrays)."""
        if self._by_time is None:
            right = pd.DataFrame({"s": self.subject, "t": self.time_us, "pos": np.arange(len(self.subject))})
            self._by_time = right.sort_values("t", kind="stable")
        return self._by_time

    @classmethod
    def from_frame(cls, events: pd.DataFrame) -> SortedEvents:
        """From a DataFrame with subject_id, time, code."""
        t = _us(events["time"])
        subj = events[SUBJECT_ID].to_numpy(dtype=np.int64)
        order = np.lexsort((t, subj))
        cat = pd.Categorical(events["code"].to_numpy()[order])
        return cls(subj[order], t[order], np.asarray(cat.codes, dtype=np.int64),
                   [str(c) for c in cat.categories])


def _asof(ev: SortedEvents, subj: np.ndarray, t: np.ndarray,
          direction: Literal["backward", "forward"]) -> np.ndarray:
    """Position in ``ev`` of the last event <= t ('backward') or first event >= t ('forward'); -1 if none."""
    left = pd.DataFrame({"s": subj, "t": t, "r": np.arange(len(t))}).sort_values("t", kind="stable")
    m = pd.merge_asof(left, ev.by_time(), on="t", by="s", direction=direction, allow_exact_matches=True)
    out = np.full(len(t), -1, dtype=np.int64)
    got = m["pos"].notna().to_numpy()
    out[m["r"].to_numpy()[got]] = m["pos"].to_numpy()[got].astype(np.int64)
    return out


def window_counts(ev: SortedEvents, subj: np.ndarray, pt_us: np.ndarray,
                  window_days: float | None) -> sp.csr_matrix:
    """(n_rows, len(ev.codes)) counts of each code in [pt - window, pt] (all history when window is None)."""
    n = len(subj)
    uniq, first = np.unique(ev.subject, return_index=True)
    last = np.append(first[1:], len(ev.subject))
    k = np.searchsorted(uniq, subj)
    known = (k < len(uniq)) & (uniq[np.minimum(k, len(uniq) - 1)] == subj)
    s_start = np.where(known, first[np.minimum(k, len(uniq) - 1)], 0)
    s_end = np.where(known, last[np.minimum(k, len(uniq) - 1)], 0)
    end_pos = _asof(ev, subj, pt_us, "backward")
    end = np.where(end_pos >= 0, end_pos + 1, s_start)
    if window_days is None:
        start = s_start
    else:
        start_pos = _asof(ev, subj, pt_us - int(window_days * DAY_US), "forward")
        start = np.where(start_pos >= 0, start_pos, s_end)
    lengths = np.maximum(end - start, 0)
    rows = np.repeat(np.arange(n), lengths)
    offsets = np.repeat(start - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    idx = np.arange(lengths.sum()) + offsets
    data = np.ones(len(idx), dtype=np.float32)
    return sp.coo_matrix((data, (rows, ev.code_idx[idx])), shape=(n, len(ev.codes))).tocsr()


@dataclass
class CountFeaturizer:
    """Fit the code vocabulary on train rows, then build [counts per window | age | sex] matrices."""

    windows_days: tuple[float | None, ...] = (30.0, 365.0, None)
    min_count: int = 5
    max_codes: int = 1000
    vocab: list[str] = field(default_factory=list)

    def feature_names(self) -> list[str]:
        """Column names: ``<code>@<window>d`` / ``<code>@all``, then age_years, sex_F, sex_M."""
        names = [f"{c}@{'all' if w is None else f'{w:g}d'}" for w in self.windows_days for c in self.vocab]
        return names + ["age_years", "sex_F", "sex_M"]

    def fit_transform(self, events: pd.DataFrame, rows: pd.DataFrame,
                      train_mask: np.ndarray) -> sp.csr_matrix:
        """Fit the vocabulary on ``rows[train_mask]`` and return features for all ``rows`` (n, n_features)."""
        ev = SortedEvents.from_frame(events)
        subj = rows[SUBJECT_ID].to_numpy(dtype=np.int64)
        pt = _us(rows[PREDICTION_TIME])
        hist = window_counts(ev, subj, pt, None)
        doc_freq = np.asarray((hist[np.asarray(train_mask)] > 0).sum(axis=0)).ravel()
        keep = np.flatnonzero(doc_freq >= self.min_count)
        keep = keep[np.argsort(-doc_freq[keep], kind="stable")][: self.max_codes]
        keep = np.sort(keep)
        self.vocab = [ev.codes[i] for i in keep]
        blocks = [(hist if w is None else window_counts(ev, subj, pt, w))[:, keep] for w in self.windows_days]
        return sp.hstack([*blocks, sp.csr_matrix(demographics(events, rows))], format="csr")


def last_at_or_before(events: pd.DataFrame, rows: pd.DataFrame, prefix: str) -> pd.DataFrame | None:
    """Per label row, the last event whose code starts with ``prefix`` at or before prediction_time.

    Static events (null time) count as before. Returns DataFrame(value: code without prefix, time_us)
    aligned with ``rows`` (NaN where none), or None when no event has the prefix at all.
    """
    ev = events.loc[events["code"].str.startswith(prefix)]
    if ev.empty:
        return None
    t = _us(ev["time"])
    right = pd.DataFrame({"s": ev[SUBJECT_ID].to_numpy(), "t": t, "time_us": t,
                          "value": ev["code"].str[len(prefix):].to_numpy()})
    left = pd.DataFrame({"s": rows[SUBJECT_ID].to_numpy(), "t": _us(rows[PREDICTION_TIME]),
                         "r": np.arange(len(rows))})
    m = pd.merge_asof(left.sort_values("t"), right.sort_values("t", kind="stable"), on="t", by="s",
                      direction="backward")
    return m.set_index("r")[["value", "time_us"]].reindex(np.arange(len(rows)))


def age_years(events: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """(n,) age in years at prediction_time from the MEDS_BIRTH at or before it (NaN when none)."""
    rows = rows.reset_index(drop=True)
    birth = last_at_or_before(events, rows, BIRTH_CODE)
    if birth is None:
        return np.full(len(rows), np.nan)
    pt = _us(rows[PREDICTION_TIME]).astype(float)
    return np.asarray((pt - birth["time_us"].to_numpy(dtype=float)) / (365.25 * DAY_US), dtype=float)


def demographics(events: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """(n, 3): age in years at prediction_time (NaN without MEDS_BIRTH), sex_F, sex_M (0/1) — only
    events at or before prediction_time are used, like every other feature."""
    rows = rows.reset_index(drop=True)
    sex = last_at_or_before(events, rows, "GENDER//")
    s = sex["value"] if sex is not None else pd.Series([None] * len(rows))
    return np.column_stack([age_years(events, rows), (s == "F").to_numpy(dtype=float),
                            (s == "M").to_numpy(dtype=float)])
