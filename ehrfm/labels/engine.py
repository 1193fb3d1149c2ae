"""The label engine: one pure function per subject, ``label_subject``, shared by Spark and direct use.

Windows are half-open on the left: an outcome counts when ``prediction_time < time <= window_end``. Events
AT ``prediction_time`` are model inputs (DESIGN.md: prediction_time is inclusive), so they can never be
outcomes; nothing after ``window_end`` is ever read.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from ehrfm.labels.spec import ENCOUNTER_END, ENCOUNTER_START, TaskSpec, codes_matching
from ehrfm.schema import CODE, DEATH_CODE, ENCOUNTER_ID, LABELS_SCHEMA, PREDICTION_TIME, SUBJECT_ID, TIME

LABEL_COLUMNS = [f.name for f in LABELS_SCHEMA]
_DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class _Encounter:
    start: pd.Timestamp | None
    end: pd.Timestamp | None


@dataclass
class _Timeline:
    """Per-subject facts every task reads, computed once."""

    subject_id: int
    ev: pd.DataFrame  # timed events, time-sorted (stable)
    encounters: dict[tuple[str, str], _Encounter]  # (encounter_id, class) -> START/END times
    death: pd.Timestamp | None  # earliest MEDS_DEATH
    death_encounters: set[str]  # encounter ids carried by MEDS_DEATH rows
    first_time: pd.Timestamp | None
    record_end: pd.Timestamp | None


def _timeline(events: pd.DataFrame, record_end: pd.Timestamp | None) -> _Timeline:
    subject_ids = events[SUBJECT_ID].unique()
    if len(subject_ids) != 1:
        raise ValueError(f"label_subject: events must hold exactly one subject, got {len(subject_ids)}")
    ev = events[events[TIME].notna()].sort_values(TIME, kind="stable").reset_index(drop=True)
    ev[TIME] = pd.to_datetime(ev[TIME])
    ev[CODE] = ev[CODE].astype(str)
    enc_id = ev[ENCOUNTER_ID] if ENCOUNTER_ID in ev else pd.Series(None, index=ev.index, dtype=object)
    ev[ENCOUNTER_ID] = enc_id.astype(object).where(enc_id.notna(), None)
    starts = ev[ev[CODE].str.match(ENCOUNTER_START.pattern) & ev[ENCOUNTER_ID].notna()]
    ends = ev[ev[CODE].str.match(ENCOUNTER_END.pattern) & ev[ENCOUNTER_ID].notna()]
    # keyed by (id, class): MIMIC gives the ED visit before an admission the admission's id (hadm_id),
    # and a stay's length must be measured between the INPATIENT START and END, not from the ED arrival
    s = starts.groupby([starts[ENCOUNTER_ID].astype(str), starts[CODE].map(_encounter_class)])[TIME].min()
    e = ends.groupby([ends[ENCOUNTER_ID].astype(str), ends[CODE].map(_encounter_class)])[TIME].max()
    encounters = {k: _Encounter(s.get(k), e.get(k)) for k in set(s.index) | set(e.index)}
    deaths = ev[ev[CODE] == DEATH_CODE]
    return _Timeline(
        subject_id=int(subject_ids[0]),
        ev=ev,
        encounters=encounters,
        death=deaths[TIME].min() if len(deaths) else None,
        death_encounters={str(x) for x in deaths[ENCOUNTER_ID].dropna()},
        first_time=ev[TIME].min() if len(ev) else None,
        record_end=record_end if record_end is not None else (ev[TIME].max() if len(ev) else None),
    )


def _encounter_class(code: str) -> str:
    """``ENCOUNTER//INPATIENT//START`` -> ``INPATIENT``."""
    return code.split("//")[1]


def _find_encounter(tl: _Timeline, code: str, enc_id: object) -> _Encounter | None:
    """The index event's encounter: same id and, for an encounter code, the same class (else INPATIENT,
    else any class with that id)."""
    if enc_id is None:
        return None
    key = str(enc_id)
    if ENCOUNTER_START.match(code) or ENCOUNTER_END.match(code):
        return tl.encounters.get((key, _encounter_class(code)))
    same = [k for k in tl.encounters if k[0] == key]
    pick = (key, "INPATIENT") if (key, "INPATIENT") in tl.encounters else (min(same) if same else None)
    return tl.encounters[pick] if pick else None


def _visit_span(tl: _Timeline, enc_id: str) -> tuple[pd.Timestamp | None, pd.Timestamp | None]:
    """[first START, last END] over every encounter class that carries ``enc_id`` (one visit)."""
    encs = [v for k, v in tl.encounters.items() if k[0] == enc_id]
    starts = [x.start for x in encs if x.start is not None]
    ends = [x.end for x in encs if x.end is not None]
    return (min(starts) if starts else None, max(ends) if ends else None)


def _empty() -> pd.DataFrame:
    return LABELS_SCHEMA.empty_table().to_pandas()


def label_subject(events: pd.DataFrame, spec: TaskSpec, record_end: pd.Timestamp | None = None) -> pd.DataFrame:
    """Labels of one subject for one task.

    ``events``: the subject's MEDS events (EVENTS_SCHEMA columns; at least subject_id, time, code,
    encounter_id). ``record_end``: the subject's last event time when ``events`` was pre-filtered to the
    codes the task reads (the Spark path does this); default ``events.time.max()``.
    Returns a DataFrame with the LABELS_SCHEMA columns, one row per distinct prediction_time, sorted by it.
    """
    return label_subject_tasks(events, [spec], record_end)[spec.name]


def label_subject_tasks(
    events: pd.DataFrame, specs: Iterable[TaskSpec], record_end: pd.Timestamp | None = None
) -> dict[str, pd.DataFrame]:
    """:func:`label_subject` for several tasks, sharing the per-subject preprocessing."""
    specs = list(specs)
    if len(events) == 0:
        return {s.name: _empty() for s in specs}
    tl = _timeline(events, record_end)
    return {s.name: _rows_frame(tl.subject_id, _label(tl, s)) for s in specs}


def _rows_frame(subject_id: int, rows: list[dict[str, object]]) -> pd.DataFrame:
    if not rows:
        return _empty()
    df = pd.DataFrame(rows)
    # one row per (subject, prediction_time): the first index event (time order) wins
    df = df.drop_duplicates(PREDICTION_TIME, keep="first").sort_values(PREDICTION_TIME, kind="stable")
    df[SUBJECT_ID] = np.int64(subject_id)
    df[PREDICTION_TIME] = pd.to_datetime(df[PREDICTION_TIME]).astype("datetime64[us]")
    for col in LABEL_COLUMNS:
        if col not in df:
            df[col] = None
    return df[LABEL_COLUMNS].reset_index(drop=True)


def _label(tl: _Timeline, spec: TaskSpec) -> list[dict[str, object]]:
    ev = tl.ev
    rows: list[dict[str, object]] = []
    index_rows = ev[codes_matching(ev[CODE], spec.index.codes)]
    outcome_mask = codes_matching(ev[CODE], spec.outcome.codes)
    for t_index, code, enc_id in zip(index_rows[TIME], index_rows[CODE], index_rows[ENCOUNTER_ID], strict=True):
        pred = t_index + spec.prediction_offset
        enc = _find_encounter(tl, code, enc_id)
        if not _eligible(tl, spec, pred, enc, enc_id):
            continue
        row = _outcome(tl, spec, pred, enc, enc_id, outcome_mask)
        if row is not None:
            row[PREDICTION_TIME] = pred
            rows.append(row)
    return rows


def _eligible(tl: _Timeline, spec: TaskSpec, pred: pd.Timestamp, enc: _Encounter | None, enc_id: object) -> bool:
    """Index requirements (at prediction_time) and exclusions."""
    if "alive" in spec.index.require and tl.death is not None and tl.death <= pred:
        return False
    if "encounter_ongoing" in spec.index.require and (
        enc is None or enc.start is None or enc.end is None or not (enc.start <= pred < enc.end)
    ):
        return False
    grace = spec.exclusions.death_during_encounter
    if grace is not None:
        if enc_id is not None and str(enc_id) in tl.death_encounters:
            return False
        if enc is not None and tl.death is not None:
            lo = enc.start if enc.start is not None else enc.end
            hi = enc.end if enc.end is not None else enc.start
            if lo is not None and hi is not None and lo <= tl.death <= hi + grace:
                return False
    history = spec.exclusions.min_history
    return not (history > pd.Timedelta(0) and (tl.first_time is None or tl.first_time > pred - history))


def _outcome(
    tl: _Timeline, spec: TaskSpec, pred: pd.Timestamp, enc: _Encounter | None, enc_id: object, mask: pd.Series
) -> dict[str, object] | None:
    """The value columns for one prediction time, or None when the row is excluded / censored."""
    o = spec.outcome
    if o.encounter_duration_gt is not None:
        if enc is None or enc.start is None or enc.end is None:
            return None  # stay never closed in the record: unknown length
        return {"boolean_value": bool(enc.end - enc.start > o.encounter_duration_gt)}
    if spec.kind == "forecast":
        return _forecast(tl, spec, pred)
    if o.until == "encounter_end":
        if enc is None or enc.end is None:
            return None
        window_end, known_end = enc.end + o.grace, True
    else:
        assert o.within is not None
        window_end = pred + o.within
        known_end = spec.censoring.followup == "none" or (tl.record_end is not None and tl.record_end >= window_end)
    ev = tl.ev
    in_window = ev[TIME] <= window_end
    if o.same_encounter and enc_id is not None:
        # events linked to the index encounter by id belong to it even when timed after a date-precision END
        # (MIMIC: dischtime 00:00, deathtime later that day, both with the hadm_id)
        in_window |= ev[ENCOUNTER_ID].map(lambda x: x is not None and str(x) == str(enc_id)).astype(bool)
    hit = mask & (ev[TIME] > pred) & in_window
    if o.other_encounter and enc_id is not None:
        hit &= ev[ENCOUNTER_ID].map(lambda x: x is None or str(x) != str(enc_id)).astype(bool)
    t_event = ev.loc[hit, TIME].min() if hit.any() else None
    death_first = tl.death is not None and pred < tl.death <= window_end and (t_event is None or tl.death < t_event)
    if spec.kind == "time_to_event":
        if t_event is not None:
            return {"duration_days": (t_event - pred) / _DAY, "event": 1}
        stop = window_end
        if spec.censoring.followup == "record_end" and tl.record_end is not None:
            stop = min(stop, tl.record_end)
        if death_first and tl.death is not None:  # a competing death censors a non-death outcome
            stop = min(stop, tl.death)
        if stop <= pred:
            return None  # no follow-up at all
        return {"duration_days": (stop - pred) / _DAY, "event": 0}
    if t_event is not None:
        return {"boolean_value": True}
    if death_first:
        return None if spec.censoring.death == "exclude" else {"boolean_value": False}
    return {"boolean_value": False} if known_end else None


def _forecast(tl: _Timeline, spec: TaskSpec, pred: pd.Timestamp) -> dict[str, object] | None:
    """Target codes recorded at the first encounter that starts after prediction_time.

    "Recorded at" = carries that encounter's id, or (no encounter id) is timed within its [START, END].
    """
    ev, o = tl.ev, spec.outcome
    opens = ev[codes_matching(ev[CODE], o.next_encounter) & ev[ENCOUNTER_ID].notna() & (ev[TIME] > pred)]
    if o.within is not None:
        opens = opens[opens[TIME] <= pred + o.within]
    if opens.empty:
        return None  # no next encounter in the record: censored
    nxt = str(opens[ENCOUNTER_ID].iloc[0])
    span_start, span_end = _visit_span(tl, nxt)
    start = span_start if span_start is not None else opens[TIME].iloc[0]
    end = span_end if span_end is not None else start
    target = codes_matching(ev[CODE], o.codes)
    ids = ev[ENCOUNTER_ID].astype(object)
    same = ids.map(lambda x: x is not None and str(x) == nxt).astype(bool)
    timed = ids.isna() & (ev[TIME] >= start) & (ev[TIME] <= end)
    codes = sorted(set(ev.loc[target & (same | timed), CODE]))
    if not codes and not o.allow_empty:
        return None
    return {"target_codes": codes}


def labels_to_arrow(df: pd.DataFrame) -> pa.Table:
    """A labels DataFrame (LABELS_SCHEMA columns) as a pyarrow Table in exactly LABELS_SCHEMA."""
    cols = {}
    for f in LABELS_SCHEMA:
        s = df[f.name] if f.name in df else pd.Series([None] * len(df), dtype=object)
        values = [None if (v is None or (not isinstance(v, (list, np.ndarray)) and pd.isna(v))) else v for v in s]
        if pa.types.is_list(f.type):
            values = [None if v is None else list(v) for v in values]
        cols[f.name] = pa.array(values, type=f.type)
    return pa.table(cols, schema=LABELS_SCHEMA)
