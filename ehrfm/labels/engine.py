"""The label engine: one pure function per subject, shared by Spark and direct use.

Windows are half-open on the left: an outcome counts when ``prediction_time < time <= window_end``. Events
AT ``prediction_time`` are model inputs (DESIGN.md: prediction_time is inclusive), so they can never be
outcomes; nothing after ``window_end`` is ever read.

Inside, a subject is a few numpy arrays (times in int64 microseconds, codes, encounter ids): the engine runs
once per subject at population scale, where per-call pandas overhead would dominate.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from ehrfm.labels.aliases import ENCOUNTER_REGEX, canonical_code
from ehrfm.labels.spec import CodePattern, TaskSpec, compiled_patterns, pattern_hits
from ehrfm.schema import CODE, DEATH_CODE, ENCOUNTER_ID, LABELS_SCHEMA, PREDICTION_TIME, SUBJECT_ID, TIME

LABEL_COLUMNS = [f.name for f in LABELS_SCHEMA]
_ENC = re.compile(ENCOUNTER_REGEX)
_US_PER_DAY = 86_400_000_000
Span = tuple[int | None, int | None]  # (START, END) in microseconds


def _us(td: pd.Timedelta) -> int:
    return int(td.value // 1000)


@dataclass
class _Timeline:
    """Per-subject facts every task reads, computed once. Times are int64 microseconds since 1970."""

    subject_id: int
    t: np.ndarray  # (n,) int64, sorted by (t, code, enc) -- the raw code, in every engine
    code: np.ndarray  # (n,) object str, the raw code
    enc: np.ndarray  # (n,) object str, "" when the event has no encounter_id
    encounters: dict[tuple[str, str], Span]  # (encounter_id, class) -> (START, END)
    death: int | None  # earliest MEDS_DEATH
    death_encounters: set[str]  # encounter ids carried by MEDS_DEATH rows
    first_time: int | None
    record_end: int | None
    _masks: dict[tuple[CodePattern, ...], np.ndarray]

    def matching(self, patterns: tuple[CodePattern, ...]) -> np.ndarray:
        """(n,) bool: events whose code, raw or its encounter alias, matches any pattern (regex run once per
        distinct code)."""
        if patterns not in self._masks:
            rx = compiled_patterns(patterns) if patterns else None
            uniq = np.unique(self.code) if len(self.code) else self.code
            hits = [c for c in uniq if rx is not None and pattern_hits(rx, c)]
            self._masks[patterns] = np.isin(self.code, np.array(hits, dtype=object)) if hits else np.zeros(
                len(self.code), bool)
        return self._masks[patterns]


def _rank(values: np.ndarray) -> np.ndarray:
    """Dense ranks of strings in code-point order (= Spark's binary string order)."""
    return np.unique(values, return_inverse=True)[1].reshape(-1) if len(values) else np.zeros(0, np.int64)


def _timeline(events: pd.DataFrame, record_end: pd.Timestamp | None) -> _Timeline:
    subject_ids = pd.unique(events[SUBJECT_ID])
    if len(subject_ids) != 1:
        raise ValueError(f"label_subject: events must hold exactly one subject, got {len(subject_ids)}")
    timed = events[events[TIME].notna()]
    t = pd.to_datetime(timed[TIME]).to_numpy().astype("datetime64[us]").view("int64")
    code = timed[CODE].astype(str).to_numpy(dtype=object)
    raw_enc = (timed[ENCOUNTER_ID] if ENCOUNTER_ID in timed
               else pd.Series(None, index=timed.index, dtype=object))
    enc = np.array(["" if pd.isna(x) else str(x) for x in raw_enc.to_numpy(dtype=object)], dtype=object)
    # canonical order (time, code, encounter_id), never the input row order: ties at one instant (two
    # discharges, two next STARTs) resolve the same way in every engine and for every file layout
    order = np.lexsort((_rank(enc), _rank(code), t))
    t, code, enc = t[order], code[order], enc[order]
    # encounters keyed by (id, class): MIMIC gives the ED visit before an admission the admission's hadm_id,
    # and a stay's length is measured between the INPATIENT START and END, not from the ED arrival. Built from
    # the canonical form (ehrfm.labels.aliases), so HOSPITAL_ADMISSION//... opens an INPATIENT encounter
    encounters: dict[tuple[str, str], list[int | None]] = {}
    bounds = {c: m for c in (np.unique(code) if len(code) else ()) if (m := _ENC.match(canonical_code(c)))}
    is_bound = np.isin(code, np.array(list(bounds), dtype=object)) & (enc != "") if bounds else []
    for i in np.flatnonzero(is_bound):
        m = bounds[code[i]]
        span = encounters.setdefault((enc[i], m.group(1)), [None, None])
        ti = int(t[i])
        if m.group(2) == "START":
            span[0] = ti if span[0] is None else min(span[0], ti)
        else:
            span[1] = ti if span[1] is None else max(span[1], ti)
    is_death = code == DEATH_CODE
    return _Timeline(
        subject_id=int(subject_ids[0]),
        t=t, code=code, enc=enc,
        encounters={k: (v[0], v[1]) for k, v in encounters.items()},
        death=int(t[is_death].min()) if is_death.any() else None,
        death_encounters={e for e in enc[is_death] if e},
        first_time=int(t[0]) if len(t) else None,
        record_end=_us(record_end - pd.Timestamp(0)) if record_end is not None
        else (int(t[-1]) if len(t) else None),
        _masks={},
    )


def _find_encounter(tl: _Timeline, code: str, enc_id: str) -> Span | None:
    """The index event's encounter: same id and, for an encounter code, the same class (else INPATIENT,
    else any class with that id)."""
    if not enc_id:
        return None
    m = _ENC.match(canonical_code(code))
    if m is not None:
        return tl.encounters.get((enc_id, m.group(1)))
    same = sorted(k for k in tl.encounters if k[0] == enc_id)
    pick = (enc_id, "INPATIENT") if (enc_id, "INPATIENT") in tl.encounters else (same[0] if same else None)
    return tl.encounters[pick] if pick else None


def _visit_span(tl: _Timeline, enc_id: str) -> Span:
    """[first START, last END] over every encounter class that carries ``enc_id`` (one visit)."""
    spans = [v for k, v in tl.encounters.items() if k[0] == enc_id]
    starts = [s for s, _ in spans if s is not None]
    ends = [e for _, e in spans if e is not None]
    return (min(starts) if starts else None, max(ends) if ends else None)


def label_subject(events: pd.DataFrame, spec: TaskSpec,
                  record_end: pd.Timestamp | None = None) -> pd.DataFrame:
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
    return {name: rows_to_arrow(rows).to_pandas()
            for name, rows in label_subject_rows(events, specs, record_end).items()}


def label_subject_rows(
    events: pd.DataFrame, specs: Iterable[TaskSpec], record_end: pd.Timestamp | None = None
) -> dict[str, list[dict[str, object]]]:
    """The engine's core: ``{task: label rows}`` of one subject, each row a dict of LABELS_SCHEMA columns
    (``prediction_time`` in int64 microseconds), one per distinct prediction_time (the earliest index event
    wins), sorted by prediction_time. Both the direct and the Spark path call this."""
    specs = list(specs)
    if len(events) == 0:
        return {s.name: [] for s in specs}
    tl = _timeline(events, record_end)
    return {s.name: _finish(tl.subject_id, _label(tl, s)) for s in specs}


def _finish(subject_id: int, rows: list[dict[str, object]]) -> list[dict[str, object]]:
    first: dict[int, dict[str, object]] = {}
    for row in rows:  # rows come in index-event time order: the first one per prediction_time wins
        first.setdefault(int(row[PREDICTION_TIME]), row)  # type: ignore[call-overload]
    out = []
    for pred in sorted(first):
        row = dict.fromkeys(LABEL_COLUMNS)
        row.update(first[pred])
        row[SUBJECT_ID] = subject_id
        out.append(row)
    return out


def rows_to_arrow(rows: list[dict[str, object]]) -> pa.Table:
    """Label rows (from :func:`label_subject_rows`) as a pyarrow Table in exactly LABELS_SCHEMA."""
    return pa.Table.from_pylist(rows, schema=LABELS_SCHEMA) if rows else LABELS_SCHEMA.empty_table()


def _label(tl: _Timeline, spec: TaskSpec) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    offset = _us(spec.prediction_offset)
    for i in np.flatnonzero(tl.matching(spec.index.codes)):
        pred = int(tl.t[i]) + offset
        enc_id = str(tl.enc[i])
        enc = _find_encounter(tl, str(tl.code[i]), enc_id)
        if not _eligible(tl, spec, pred, enc, enc_id):
            continue
        row = _outcome(tl, spec, pred, enc, enc_id)
        if row is not None:
            row[PREDICTION_TIME] = pred
            rows.append(row)
    return rows


def _eligible(tl: _Timeline, spec: TaskSpec, pred: int, enc: Span | None, enc_id: str) -> bool:
    """Index requirements (at prediction_time) and exclusions."""
    if "alive" in spec.index.require and tl.death is not None and tl.death <= pred:
        return False
    if "encounter_ongoing" in spec.index.require and (
        enc is None or enc[0] is None or enc[1] is None or not (enc[0] <= pred < enc[1])
    ):
        return False
    grace = spec.exclusions.death_during_encounter
    if grace is not None:
        if enc_id and enc_id in tl.death_encounters:
            return False
        if enc is not None and tl.death is not None:
            lo = enc[0] if enc[0] is not None else enc[1]
            hi = enc[1] if enc[1] is not None else enc[0]
            if lo is not None and hi is not None and lo <= tl.death <= hi + _us(grace):
                return False
    history = _us(spec.exclusions.min_history)
    return not (history > 0 and (tl.first_time is None or tl.first_time > pred - history))


def _outcome(tl: _Timeline, spec: TaskSpec, pred: int, enc: Span | None, enc_id: str) -> dict[str,
                                                                                              object] | None:
    """The value columns for one prediction time, or None when the row is excluded / censored."""
    o = spec.outcome
    if o.encounter_duration_gt is not None:
        if enc is None or enc[0] is None or enc[1] is None:
            return None  # stay never closed in the record: unknown length
        return {"boolean_value": bool(enc[1] - enc[0] > _us(o.encounter_duration_gt))}
    if spec.kind == "forecast":
        return _forecast(tl, spec, pred)
    if o.until == "encounter_end":
        if enc is None or enc[1] is None:
            return None
        window_end, known_end = enc[1] + _us(o.grace), True
    else:
        assert o.within is not None
        window_end = pred + _us(o.within)
        known_end = (spec.censoring.followup == "none"
                     or (tl.record_end is not None and tl.record_end >= window_end))
    in_window = tl.t <= window_end
    if o.same_encounter and enc_id:
        # events linked to the index encounter by id belong to it even when timed after a date-precision END
        # (MIMIC: dischtime 00:00, deathtime later that day, both with the hadm_id)
        in_window = in_window | (tl.enc == enc_id)
    hit = tl.matching(o.codes) & (tl.t > pred) & in_window
    if o.other_encounter and enc_id:
        hit &= tl.enc != enc_id
    if tl.death is not None:  # a record dated after the (first) death is never an outcome
        hit &= tl.t <= tl.death
    t_event = int(tl.t[hit].min()) if hit.any() else None
    death = tl.death
    death_first = death is not None and pred < death <= window_end and (t_event is None or death < t_event)
    if spec.kind == "time_to_event":
        if t_event is not None:
            return {"duration_days": (t_event - pred) / _US_PER_DAY, "event": 1}
        stop = window_end
        if spec.censoring.followup == "record_end" and tl.record_end is not None:
            stop = min(stop, tl.record_end)
        if death_first and death is not None:  # a competing death censors a non-death outcome
            stop = min(stop, death)
        if stop <= pred:
            return None  # no follow-up at all
        return {"duration_days": (stop - pred) / _US_PER_DAY, "event": 0}
    if t_event is not None:
        return {"boolean_value": True}
    if death_first:
        return None if spec.censoring.death == "exclude" else {"boolean_value": False}
    return {"boolean_value": False} if known_end else None


def _forecast(tl: _Timeline, spec: TaskSpec, pred: int) -> dict[str, object] | None:
    """Target codes recorded at the first encounter that starts after prediction_time.

    "Recorded at" = carries that encounter's id, or (no encounter id) is timed within its [START, END].
    """
    o = spec.outcome
    opens = tl.matching(o.next_encounter) & (tl.enc != "") & (tl.t > pred)
    if o.within is not None:
        opens &= tl.t <= pred + _us(o.within)
    if tl.death is not None:  # an encounter recorded after the death is not the next encounter
        opens &= tl.t <= tl.death
    if not opens.any():
        return None  # no next encounter in the record: censored
    first = int(np.flatnonzero(opens)[0])
    nxt = str(tl.enc[first])
    span_start, span_end = _visit_span(tl, nxt)
    start = span_start if span_start is not None else int(tl.t[first])
    end = span_end if span_end is not None else start
    linked = (tl.enc == nxt) | ((tl.enc == "") & (tl.t >= start) & (tl.t <= end))
    codes = sorted(set(tl.code[tl.matching(o.codes) & linked]))
    if not codes and not o.allow_empty:
        return None
    return {"target_codes": codes}
