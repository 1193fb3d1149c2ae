"""Per-patient timeline → EHRMamba-style token rows (TOKENS_SCHEMA). Pure Python/NumPy: the SAME
function runs under Spark (``groupBy().applyInPandas``) and at serving time.

Row layout::

    [CLS] | [TASK:t]   static tokens   [VS] code [Qb] code ... [VE] [REG]  [W2]  [VS] ... [VE] [REG] ...
    ([TASK:t])

- Pretraining row (one per subject, all events) starts with ``[CLS]``; a task row (one per label) starts
  with the task's prompt token, which is ALSO appended at the end (EHRMamba MTF), and sees only events
  with ``time <= prediction_time`` (inclusive).
- Static block: codes with a null time, plus demographic codes (``cfg.static_prefixes``) at or before
  the cut, sorted, de-duplicated; type STATIC, outside visits (visit_order 0, segment 0).
- Visits (see :mod:`ehrfm.tokenize.timeline`): ``[VS]`` events ``[VE] [REG]``; a numeric value whose code
  has bins adds its ``[Q{b}]`` token right after the code, and that token carries the exact value in the
  ``values`` stream (scaled by the code's train bins, :meth:`Bins.scaled_value`; NaN on every other token).
  The value sits on the bin token, not the code token, so next-token prediction never reads a value it
  must predict. Between visits one interval token from the
  gap (previous visit's last event → next visit's first event): under 28 days ``[W{days//7}]``, under
  365 days ``[M{min(12, days//30)}]``, else ``[LT]``.
- The last visit of a task row stays open (no ``[VE] [REG]``) unless it holds a visit-end code
  (``cfg.visit_end_patterns``) or its last event is more than ``cfg.visit_gap_hours`` before the cut.
- Streams: ages in years from ``MEDS_BIRTH`` (0 when there is none), times in days since 1970; the
  leading tokens take the time of the first kept visit token, the trailing task token the prediction time.
  visit_orders count visits from 1 inside the row (interval tokens carry the previous visit's number);
  visit_segments are 1/2 alternating inside visits, 0 outside.
- Truncation to ``cfg.max_len`` keeps the leading and trailing tokens and the most recent visit tokens,
  starting at a ``[VS]``; when a single visit is longer than the budget the row starts inside it (never
  on a value-bin token) behind a re-inserted ``[VS]``. Visit numbers then restart at 1.
- ``text_value`` is not tokenized. Codes outside the vocabulary become ``[UNK]``.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Any

import numpy as np
import pandas as pd

from ehrfm.config.tokenize import TokenizerConfig
from ehrfm.prepare.bins import Bins, bin_token
from ehrfm.schema import (
    CLS,
    PREDICTION_TIME,
    REG,
    SUBJECT_ID,
    TOKENS_SCHEMA,
    UNK_ID,
    VE,
    VS,
    TokenType,
    task_token,
)
from ehrfm.tokenize.timeline import US_PER_DAY, US_PER_HOUR, US_PER_YEAR, Timeline, assign_visits, to_us
from ehrfm.vocab import Vocabulary

COLUMNS = [f.name for f in TOKENS_SCHEMA]


def interval_token(gap_days: float) -> str:
    """The EHRMamba interval token for a gap between visits, in days."""
    if gap_days < 28:
        return f"[W{int(max(gap_days, 0) // 7)}]"
    if gap_days < 365:
        return f"[M{min(12, int(gap_days // 30))}]"
    return "[LT]"


class _Stream:
    """Parallel token streams being built (plain lists; converted to typed arrays at the end)."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.types: list[int] = []
        self.t: list[int] = []  # µs
        self.order: list[int] = []
        self.in_visit: list[bool] = []
        self.values: list[float] = []

    def add(self, tok_id: int, typ: int, t: int, order: int, in_visit: bool,
            value: float = float("nan")) -> None:
        self.ids.append(tok_id)
        self.types.append(typ)
        self.t.append(t)
        self.order.append(order)
        self.in_visit.append(in_visit)
        self.values.append(value)


def _end_regex(patterns: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")


def _dynamic(tl: Timeline, n: int, vocab: Vocabulary, bins: Bins, cfg: TokenizerConfig,
             cut: int | None) -> _Stream:
    """Visit tokens of the first ``n`` timed events (already cut and without hoisted demographics)."""
    out = _Stream()
    if n == 0:
        return out
    t, codes, vals, enc = tl.t[:n], tl.code[:n], tl.value[:n], tl.enc[:n]
    gap_us = int(cfg.visit_gap_hours * US_PER_HOUR)
    visit, _ = assign_visits(t, enc, gap_us)
    end_re = _end_regex(cfg.visit_end_patterns)
    ids = np.fromiter((vocab.id(c) for c in codes), dtype=np.int64, count=n)
    q_ids = [vocab.id(bin_token(b)) for b in range(bins.n_bins)]
    bounds = np.flatnonzero(np.diff(visit)) + 1
    starts = np.concatenate([[0], bounds])
    stops = np.concatenate([bounds, [n]])
    for k, (a, b) in enumerate(zip(starts, stops, strict=True)):
        order = k + 1
        if k > 0:
            gap = (t[a] - t[a - 1]) / US_PER_DAY
            out.add(vocab.id(interval_token(gap)), TokenType.INTERVAL, int(t[a]), order - 1, False)
        out.add(vocab.id(VS), TokenType.VISIT_START, int(t[a]), order, True)
        for i in range(a, b):
            out.add(int(ids[i]), TokenType.CODE, int(t[i]), order, True)
            if ids[i] != UNK_ID and vals[i] == vals[i]:
                bi = bins.bin_of(codes[i], float(vals[i]))
                if bi is not None:
                    v = bins.scaled_value(codes[i], float(vals[i]))
                    out.add(q_ids[bi], TokenType.VALUE_BIN, int(t[i]), order, True, v)
        last = k == len(starts) - 1
        closed = (
            not last
            or cut is None
            or any(end_re.match(c) for c in codes[a:b])
            or cut - int(t[b - 1]) > gap_us
        )
        if closed:
            out.add(vocab.id(VE), TokenType.VISIT_END, int(t[b - 1]), order, True)
            out.add(vocab.id(REG), TokenType.REGISTER, int(t[b - 1]), order, True)
    return out


def _truncate_start(dyn: _Stream, budget: int) -> tuple[int, bool]:
    """Where the kept dynamic part starts, and whether a ``[VS]`` must be re-inserted there.

    Normally the first ``[VS]`` within the last ``budget`` tokens. When a single visit is longer than
    the budget, the row starts inside it (never on a value-bin token) behind a re-inserted ``[VS]``,
    so every row still opens on a visit boundary and visits stay balanced.
    """
    n = len(dyn.ids)
    if n <= budget:
        return 0, False
    if budget <= 1:
        return n, False
    for i in range(n - budget, n):
        if dyn.types[i] == TokenType.VISIT_START:
            return i, False
    lo = n - (budget - 1)
    while lo < n and dyn.types[lo] in (TokenType.VALUE_BIN, TokenType.VISIT_END, TokenType.REGISTER):
        lo += 1
    return lo, lo < n


def _cut_streams(
    tl: Timeline, vocab: Vocabulary, bins: Bins, cfg: TokenizerConfig, cut: int | None
) -> tuple[list[str], _Stream]:
    """Static codes and visit tokens of the events at or before ``cut`` (all when None): the part of a
    row that does not depend on its task."""
    n = len(tl.t) if cut is None else int(np.searchsorted(tl.t, cut, side="right"))
    prefixes = cfg.static_prefixes
    hoist = (np.array([c.startswith(prefixes) for c in tl.code[:n]], dtype=bool) if prefixes
             else np.zeros(n, bool))
    static = sorted(set(tl.static_codes) | set(tl.code[:n][hoist]))
    if hoist.any():
        keep = np.flatnonzero(~hoist)
        sub = Timeline(tl.subject_id, tl.birth_us, tl.static_codes, tl.t[keep], tl.code[keep], tl.value[keep],
                       tl.enc[keep])
        return static, _dynamic(sub, len(keep), vocab, bins, cfg, cut)
    return static, _dynamic(tl, n, vocab, bins, cfg, cut)


def _build_row(
    tl: Timeline, vocab: Vocabulary, bins: Bins, cfg: TokenizerConfig, task: str | None, cut: int | None,
    parts: tuple[list[str], _Stream] | None = None,
) -> dict[str, Any]:
    """Token streams of one row (pretraining when ``task`` is None, else cut at ``cut`` µs inclusive).

    ``parts``: :func:`_cut_streams` of the same ``cut``, when several rows share it (read, not changed)."""
    static, dyn = parts if parts is not None else _cut_streams(tl, vocab, bins, cfg, cut)
    lead_id = vocab.id(CLS) if task is None else vocab.id(task_token(task))
    lead_type = TokenType.SPECIAL if task is None else TokenType.TASK
    static = static[: max(cfg.max_len - 2 - (task is not None), 0)]
    budget = cfg.max_len - 1 - len(static) - (task is not None)
    s0, reopen = _truncate_start(dyn, budget)
    # leading tokens take the time of the first kept dynamic token (else the cut, else birth, else 0)
    first_t = dyn.t[s0] if s0 < len(dyn.t) else (cut if cut is not None else (tl.birth_us or 0))
    out = _Stream()
    out.add(lead_id, lead_type, first_t, 0, False)
    for c in static:
        out.add(vocab.id(c), TokenType.STATIC, first_t, 0, False)
    # renumber kept visits from 1 (a kept part always starts inside or at the start of a visit)
    base = dyn.order[s0] - 1 if s0 < len(dyn.t) else 0
    if reopen:
        out.add(vocab.id(VS), TokenType.VISIT_START, first_t, 1, True)
    for i in range(s0, len(dyn.ids)):
        out.add(dyn.ids[i], dyn.types[i], dyn.t[i], max(dyn.order[i] - base, 0), dyn.in_visit[i],
                dyn.values[i])
    if task is not None:
        assert cut is not None
        out.add(lead_id, TokenType.TASK, cut, out.order[-1], False)
    t_us = np.asarray(out.t, dtype=np.int64)
    orders = np.asarray(out.order, dtype=np.int32)
    in_visit = np.asarray(out.in_visit, dtype=bool)
    ages = (t_us - tl.birth_us) / US_PER_YEAR if tl.birth_us is not None else np.zeros(len(t_us))
    return {
        "length": len(out.ids),
        "concept_ids": np.asarray(out.ids, dtype=np.int32),
        "type_ids": np.asarray(out.types, dtype=np.int8),
        "ages": ages.astype(np.float32),
        "times": (t_us / US_PER_DAY).astype(np.float32),
        "visit_orders": orders,
        "visit_segments": np.where(in_visit, 1 + (orders - 1) % 2, 0).astype(np.int8),
        "values": np.asarray(out.values, dtype=np.float32),
    }


def _none_if_nan(x: Any) -> Any:
    # np.float32 is not a Python float: test any numpy floating scalar too (a float32 NaN is not None)
    return None if x is None or x is pd.NA or (isinstance(x, (float, np.floating)) and x != x) else x


def _label_fields(lab: pd.Series, vocab: Vocabulary) -> dict[str, Any]:
    """label / duration_days / event / target_ids from one LABELS_SCHEMA row (missing columns → null)."""
    label = None
    for col in ("boolean_value", "float_value", "integer_value"):
        v = _none_if_nan(lab.get(col))
        if v is not None:
            label = float(v)
            break
    dur = _none_if_nan(lab.get("duration_days"))
    ev = _none_if_nan(lab.get("event"))
    codes = lab.get("target_codes")
    target = None
    if codes is not None and not (isinstance(codes, float) and codes != codes):
        ids = [vocab.id(str(c)) for c in codes]
        # [UNK] is not a forecastable target: drop it; keep first occurrence order
        target = np.asarray(list(dict.fromkeys(i for i in ids if i != UNK_ID)), dtype=np.int32)
    return {
        "label": label,
        "duration_days": None if dur is None else float(dur),
        "event": None if ev is None else int(ev),
        "target_ids": target,
    }


def tokenize_subject(
    events: pd.DataFrame,
    vocab: Vocabulary,
    bins: Bins,
    cfg: TokenizerConfig,
    *,
    labels: pd.DataFrame | None = None,
    split: str | None = None,
    pretrain: bool = True,
) -> list[dict[str, Any]]:
    """Token rows (TOKENS_SCHEMA dicts) of one subject: a pretraining row (when ``pretrain`` and the
    subject has events) and one task row per label.

    ``events``: that subject's events (EVENTS_SCHEMA columns, any row order). ``labels``: that subject's
    label rows with a ``task`` column plus LABELS_SCHEMA columns (several tasks allowed). List streams are
    NumPy arrays of the schema's dtypes, all of length ``length`` ≤ ``cfg.max_len``.
    """
    sid_hint = (int(labels[SUBJECT_ID].iloc[0]) if labels is not None and len(labels) and SUBJECT_ID in labels
                else None)
    tl = Timeline.from_events(events, subject_id=sid_hint)
    base = {SUBJECT_ID: tl.subject_id, "split": split}
    nulls = {"label": None, "duration_days": None, "event": None, "target_ids": None}
    rows: list[dict[str, Any]] = []
    if pretrain and (len(tl) or len(tl.static_codes)):
        rows.append({**base, "task": None, PREDICTION_TIME: None,
                     **_build_row(tl, vocab, bins, cfg, None, None), **nulls})
    if labels is None or len(labels) == 0:
        return rows
    if "task" not in labels.columns:
        raise ValueError(f"labels: missing column 'task' for subject_id={tl.subject_id}")
    pt_us, pt_null = to_us(labels[PREDICTION_TIME])
    if pt_null.any():
        raise ValueError(f"labels: field prediction_time is null for subject_id={tl.subject_id}")
    tasks = labels["task"].astype(str).to_numpy()
    for j in sorted(range(len(labels)), key=lambda k: (tasks[k], pt_us[k], k)):
        row = _build_row(tl, vocab, bins, cfg, tasks[j], int(pt_us[j]))
        pt = pd.Timestamp(int(pt_us[j]), unit="us")
        rows.append({**base, "task": tasks[j], PREDICTION_TIME: pt, **row,
                     **_label_fields(labels.iloc[j], vocab)})
    return rows


def tokenize_for_prediction(
    events: pd.DataFrame,
    vocab: Vocabulary,
    bins: Bins,
    cfg: TokenizerConfig,
    prediction_time: Any,
    tasks: list[str],
) -> list[dict[str, Any]]:
    """Serving path: one task row per task in ``tasks`` (in that order) at ``prediction_time``
    (inclusive), label columns null, ``split`` None: the rows :func:`tokenize_subject` writes for those
    labels (the same timeline and row builder; a test compares them), with the task-independent part of
    the rows (static codes, visit tokens up to the cut) built once for all tasks, and no label frame."""
    tl = Timeline.from_events(events)
    pt_us, pt_null = to_us(pd.Series([pd.Timestamp(prediction_time)]))
    if pt_null.any():
        raise ValueError(f"prediction_time: null for subject_id={tl.subject_id}")
    cut = int(pt_us[0])
    parts = _cut_streams(tl, vocab, bins, cfg, cut)
    pt = pd.Timestamp(cut, unit="us")
    nulls = {"label": None, "duration_days": None, "event": None, "target_ids": None}
    return [{SUBJECT_ID: tl.subject_id, "split": None, "task": t, PREDICTION_TIME: pt,
             **_build_row(tl, vocab, bins, cfg, t, cut, parts), **nulls} for t in tasks]


def rows_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows → pandas frame with the TOKENS_SCHEMA column order (what ``applyInPandas`` returns)."""
    return pd.DataFrame(rows, columns=COLUMNS)
