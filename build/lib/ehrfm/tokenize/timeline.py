"""One patient's events as sorted NumPy arrays, and their grouping into visits.

Visits (documented rule, applied to the events a row may see, i.e. AFTER the prediction-time cut, so
nothing later can change how earlier events are grouped):

1. Each ``encounter_id`` spans ``[first event, last event]`` of its events.
2. Each timed event without ``encounter_id`` is a point ``[t, t]``.
3. Spans are swept by start time; a span joins the current visit when it starts at or before the visit's
   end (overlapping encounters merge, and an event without encounter inside an encounter's span joins
   it), or when both it and the whole current visit are encounter-less and the gap is at most
   ``visit_gap_hours``. Otherwise it starts a new visit.

So visits never overlap in time and the token stream is time-ordered. Every timed event lands in a
visit; only static tokens (null time, demographics) are outside visits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ehrfm.schema import BIRTH_CODE, CODE, ENCOUNTER_ID, NUMERIC_VALUE, SUBJECT_ID, TIME

US_PER_DAY = 86_400_000_000
US_PER_HOUR = 3_600_000_000
US_PER_YEAR = 365.25 * US_PER_DAY


def to_us(values: pd.Series | pd.Index | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Timestamps → (int64 microseconds since 1970, null mask). Tz-aware input is converted to UTC."""
    s = pd.Series(values)
    if not pd.api.types.is_datetime64_any_dtype(s.dtype):
        s = pd.to_datetime(s)
    if getattr(s.dt, "tz", None) is not None:
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    null = s.isna().to_numpy()
    us = s.to_numpy(dtype="datetime64[us]").astype(np.int64)
    us[null] = 0
    return us, null


@dataclass
class Timeline:
    """Sorted, validated events of one subject (static and birth separated from timed events)."""

    subject_id: int
    birth_us: int | None  # MEDS_BIRTH time, None when absent
    static_codes: np.ndarray  # object[str]: codes with a null time
    t: np.ndarray  # int64 µs, timed events (birth excluded), sorted by (time, code, value, encounter)
    code: np.ndarray  # object[str]
    value: np.ndarray  # float64, NaN when absent
    enc: np.ndarray  # object: encounter_id or None

    @classmethod
    def from_events(cls, events: pd.DataFrame, subject_id: int | None = None) -> Timeline:
        """Validate and sort one subject's events (EVENTS_SCHEMA columns; ``encounter_id`` optional).

        ``subject_id`` names the subject when ``events`` may be empty (a subject with labels only).

        The order is a total order on the row contents, so any input row order (Spark shuffles do not
        keep one) yields the same timeline. Raises ``ValueError`` naming the field and the subject.
        """
        for col in (SUBJECT_ID, TIME, CODE):
            if col not in events.columns:
                raise ValueError(f"events: missing required column {col!r}")
        ids = pd.unique(events[SUBJECT_ID])
        if len(ids) == 0 and subject_id is not None:
            ids = np.array([subject_id])
        if len(ids) != 1 or (subject_id is not None and int(ids[0]) != subject_id):
            raise ValueError(f"events: field subject_id must hold exactly one subject, got {list(ids)[:5]}")
        sid = int(ids[0])
        if events[CODE].isna().any():
            raise ValueError(f"events: field code is null for subject_id={sid}")
        us, null = to_us(events[TIME])
        codes = events[CODE].astype(str).to_numpy(dtype=object)
        if NUMERIC_VALUE in events.columns:
            vals = pd.to_numeric(events[NUMERIC_VALUE], errors="coerce").to_numpy(dtype=np.float64)
        else:
            vals = np.full(len(events), np.nan)
        if ENCOUNTER_ID in events.columns:
            enc = events[ENCOUNTER_ID].to_numpy(dtype=object)
            enc = np.array([None if (e is None or e is pd.NA or e != e) else str(e) for e in enc],
                           dtype=object)
        else:
            enc = np.full(len(events), None, dtype=object)
        is_birth = (codes == BIRTH_CODE) & ~null
        birth = int(us[is_birth].min()) if is_birth.any() else None
        static = np.array(sorted(set(codes[null]) - {BIRTH_CODE}), dtype=object)
        keep = ~null & ~is_birth
        frame = pd.DataFrame(
            {"t": us[keep], "c": codes[keep], "v": vals[keep], "e": [x or "" for x in enc[keep]]}
        )
        order = frame.sort_values(["t", "c", "v", "e"], kind="mergesort", na_position="last").index.to_numpy()
        idx = np.flatnonzero(keep)[order]
        return cls(sid, birth, static, us[idx], codes[idx], vals[idx], enc[idx])

    def __len__(self) -> int:
        return len(self.t)


def assign_visits(t: np.ndarray, enc: np.ndarray, gap_us: int) -> tuple[np.ndarray, np.ndarray]:
    """Visit index (0-based, in time order) of each time-sorted event, and per visit whether it holds
    any encounter id. See the module docstring for the rule. ``t``: int64 µs sorted ascending."""
    n = len(t)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
    # spans: one per encounter id, one per encounter-less event
    has_enc = np.array([e is not None for e in enc], dtype=bool)
    span_of = np.empty(n, dtype=np.int64)
    starts: list[int] = []
    ends: list[int] = []
    is_enc: list[bool] = []
    enc_span: dict[str, int] = {}
    for i in range(n):
        if has_enc[i]:
            key = enc[i]
            s = enc_span.get(key)
            if s is None:
                s = enc_span[key] = len(starts)
                starts.append(int(t[i]))
                ends.append(int(t[i]))
                is_enc.append(True)
            ends[s] = int(t[i])  # t is sorted: the last seen is the max
            span_of[i] = s
        else:
            span_of[i] = len(starts)
            starts.append(int(t[i]))
            ends.append(int(t[i]))
            is_enc.append(False)
    order = sorted(range(len(starts)), key=lambda s: (starts[s], not is_enc[s], s))
    visit_of_span = np.empty(len(starts), dtype=np.int64)
    visit_enc: list[bool] = []
    cur_end = None
    for s in order:
        joins = cur_end is not None and (
            starts[s] <= cur_end or (not is_enc[s] and not visit_enc[-1] and starts[s] - cur_end <= gap_us)
        )
        if not joins:
            visit_enc.append(is_enc[s])
            cur_end = ends[s]
        else:
            visit_enc[-1] = visit_enc[-1] or is_enc[s]
            cur_end = max(cur_end, ends[s]) if cur_end is not None else ends[s]
        visit_of_span[s] = len(visit_enc) - 1
    return visit_of_span[span_of], np.array(visit_enc, dtype=bool)
