"""Token attributions -> events -> visits, with each event's code, time and value carried along.

A MEDS event becomes one code token, plus a value-bin token right after it when it has a binned numeric
value (:mod:`ehrfm.tokenize.tokenizer`); its time enters through the age/time/gap streams of the same
tokens, not as tokens of its own. So an **event** is a ``CODE`` token and the ``VALUE_BIN`` token that
follows it; a static code (``STATIC``) is an event without a time; ``[VS] [VE] [REG]``, interval and
special tokens are **structure** (each its own item: ``[W2]`` = "two weeks since the last visit" is
information too). A **visit** is every token with the same ``visit_orders`` number (interval tokens carry
the number of the visit before them; 0 = the static block). Task prompt tokens are fixed, not explained.

:func:`align_events` links code tokens back to the rows of the MEDS events they came from (serving and the
notebook have the events), which is where raw values, units and FHIR resource ids come from; without it
an event shows its value-bin token and the scaled value of the ``values`` stream.
"""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from ehrfm.config.tokenize import TokenizerConfig
from ehrfm.schema import CODE, ENCOUNTER_ID, NUMERIC_VALUE, TIME, UNIT, TokenType
from ehrfm.tokenize.timeline import Timeline, to_us
from ehrfm.vocab import Vocabulary

EVENT, STATIC, STRUCTURE = "event", "static", "structure"


@dataclass
class EventAttribution:
    """One event (or static code, or structure token) of a row and its attribution.

    ``positions``: token positions in the row; ``code``: the event's code (the token text for structure);
    ``time``: the event time (None for static codes); ``value``/``unit``: the raw value when the MEDS event
    is known (:func:`align_events`), else None; ``bin``/``scaled_value``: the value-bin token and the scaled
    value the model saw; ``source``: row index of the MEDS event in the events frame, when aligned.
    """

    kind: str
    positions: list[int]
    code: str
    time: pd.Timestamp | None
    visit: int
    attribution: float
    bin: str | None = None
    scaled_value: float | None = None
    value: float | None = None
    unit: str | None = None
    source: int | None = None

    def describe(self, descriptions: Mapping[str, str] | None = None) -> str:
        """``LAB//LOINC//2160-0 (Creatinine) 2.3 mg/dL on 2030-01-02 14:00: +0.410``."""
        name = self.code
        if descriptions and descriptions.get(self.code):
            name += f" ({descriptions[self.code]})"
        if self.value is not None:
            name += f" {self.value:g}" + (f" {self.unit}" if self.unit else "")
        elif self.bin is not None:
            name += f" {self.bin}"
        when = f" on {self.time:%Y-%m-%d %H:%M}" if self.time is not None else ""
        return f"{name}{when}: {self.attribution:+.3f}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (time as ISO text)."""
        d = asdict(self)
        d["time"] = None if self.time is None else self.time.isoformat()
        return d


@dataclass
class VisitAttribution:
    """The attribution of one visit (0 = the static block): the time span of its events, their number and
    the sum over all its items (structure tokens included)."""

    visit: int
    start: pd.Timestamp | None
    end: pd.Timestamp | None
    events: int
    attribution: float
    top: str | None
    """The visit's event with the largest |attribution| (its code)."""


def _day_times(days: np.ndarray) -> list[pd.Timestamp]:
    """Days since 1970 (the ``times`` stream, float32) -> timestamps to the second."""
    us = np.round(np.asarray(days, dtype=np.float64) * 86_400_000_000).astype("int64")
    return list(pd.to_datetime(us, unit="us").floor("s"))


def event_attributions(row: Mapping[str, Any], attributions: np.ndarray, vocab: Vocabulary,
                       sources: Sequence[int | None] | None = None,
                       events: pd.DataFrame | None = None) -> list[EventAttribution]:
    """Group one row's token attributions (n,) into events, static codes and structure tokens, in row order.

    ``row``: the token streams of the row as explained (length n: the kept, most recent tokens); ``sources``
    (n,) from :func:`align_events` with ``events`` the frame they index: raw values, units and exact times.
    """
    ids = np.asarray(row["concept_ids"], dtype=np.int64)
    types = np.asarray(row["type_ids"], dtype=np.int64)
    if len(attributions) != len(ids):
        raise ValueError(f"event_attributions: {len(attributions)} attributions for a row of {len(ids)} "
                         "tokens")
    times = _day_times(np.asarray(row["times"], dtype=np.float64))
    orders = np.asarray(row["visit_orders"], dtype=np.int64)
    values = np.asarray(row["values"], dtype=np.float64)
    source_cols = _source_columns(events) if sources is not None and events is not None else None
    out: list[EventAttribution] = []
    for i, (tok, typ) in enumerate(zip(ids.tolist(), types.tolist(), strict=True)):
        if typ in (TokenType.TASK, TokenType.PAD):
            continue
        if typ == TokenType.VALUE_BIN and out and out[-1].kind == EVENT and out[-1].positions[-1] == i - 1:
            ev = out[-1]  # the value of the event just before
            ev.positions.append(i)
            ev.attribution += float(attributions[i])
            ev.bin = vocab.token(tok)
            ev.scaled_value = None if math.isnan(values[i]) else float(values[i])
            continue
        kind = EVENT if typ == TokenType.CODE else STATIC if typ == TokenType.STATIC else STRUCTURE
        ev = EventAttribution(kind, [i], vocab.token(tok), None if kind == STATIC else times[i],
                              int(orders[i]), float(attributions[i]))
        src = sources[i] if sources is not None else None
        if src is not None and source_cols is not None:
            _fill_source(ev, source_cols, src)
        out.append(ev)
    return out


def _source_columns(events: pd.DataFrame) -> tuple[list[Any], list[Any], list[Any]]:
    """(numeric values, units, times) of the events as plain lists: row lookups without pandas per event."""
    n = len(events)
    return (events[NUMERIC_VALUE].tolist() if NUMERIC_VALUE in events else [None] * n,
            events[UNIT].tolist() if UNIT in events else [None] * n,
            list(pd.to_datetime(events[TIME])) if TIME in events else [None] * n)


def _fill_source(ev: EventAttribution, cols: tuple[list[Any], list[Any], list[Any]], src: int) -> None:
    """Raw value, unit and exact time of the MEDS event row ``src``."""
    num, unit, t = cols[0][src], cols[1][src], cols[2][src]
    ev.source = int(src)
    ev.value = None if num is None or pd.isna(num) else float(num)
    ev.unit = None if unit is None or pd.isna(unit) else str(unit)
    if ev.kind == EVENT and t is not None and not pd.isna(t):
        ev.time = pd.Timestamp(t)


def visit_attributions(events: Sequence[EventAttribution]) -> list[VisitAttribution]:
    """Sum the items of each visit (every token with that visit number), in visit order."""
    groups: dict[int, list[EventAttribution]] = defaultdict(list)
    for ev in events:
        groups[ev.visit].append(ev)
    out = []
    for visit in sorted(groups):
        items = groups[visit]
        # span of the visit's events: an interval token carries this visit's number but the next one's time
        times = [e.time for e in items if e.kind == EVENT and e.time is not None]
        real = [e for e in items if e.kind != STRUCTURE]
        top = max(real, key=lambda e: abs(e.attribution)).code if real else None
        out.append(VisitAttribution(visit, min(times) if times else None, max(times) if times else None,
                                    len(real), float(sum(e.attribution for e in items)), top))
    return out


def top_events(events: Sequence[EventAttribution], k: int, kinds: tuple[str, ...] = (EVENT, STATIC)
               ) -> list[EventAttribution]:
    """The ``k`` items of ``kinds`` with the largest |attribution|, largest first."""
    chosen = [e for e in events if e.kind in kinds]
    return sorted(chosen, key=lambda e: -abs(e.attribution))[:k]


def _key(t_us: int, code: str, value: float, enc: Any) -> tuple[int, str, float | str, str]:
    return (int(t_us), str(code), "nan" if value != value else float(value), "" if enc is None else str(enc))


def align_events(row: Mapping[str, Any], events: pd.DataFrame, vocab: Vocabulary, cfg: TokenizerConfig,
                 prediction_time: Any) -> list[int | None]:
    """For each token of ``row`` (a task row built by the tokenizer from ``events`` at ``prediction_time``,
    possibly cut to its most recent tokens), the index of the ``events`` row it came from, None for
    tokens that are no event (structure, prompt, value bins).

    The tokenizer writes one code token per timed event at or before the cut, in timeline order, minus the
    demographic codes it hoists to the static block; so the row's code tokens are the LAST ones of that
    list. Static tokens map to an event with that code. Every mapped code is checked against its token;
    ``ValueError`` when they disagree (the row was not built from these events with these rules).
    """
    ids = np.asarray(row["concept_ids"], dtype=np.int64)
    types = np.asarray(row["type_ids"], dtype=np.int64)
    tl = Timeline.from_events(events)
    cut = int(to_us(pd.Series([pd.Timestamp(prediction_time)]))[0][0])
    n = int(np.searchsorted(tl.t, cut, side="right"))
    prefixes = tuple(cfg.static_prefixes)
    dynamic = [i for i in range(n) if not (prefixes and str(tl.code[i]).startswith(prefixes))]
    # original row indices per event content (identical events are interchangeable)
    us, null = to_us(events[TIME])
    values = pd.to_numeric(events[NUMERIC_VALUE], errors="coerce").to_numpy(dtype=np.float64) \
        if NUMERIC_VALUE in events else np.full(len(events), np.nan)
    encs = events[ENCOUNTER_ID].tolist() if ENCOUNTER_ID in events else [None] * len(events)
    by_content: dict[tuple[Any, ...], deque[int]] = defaultdict(deque)
    by_code: dict[str, int] = {}
    codes = events[CODE].astype(str).tolist()
    for j in range(len(events)):
        enc = None if encs[j] is None or pd.isna(encs[j]) else encs[j]
        if not null[j]:
            by_content[_key(us[j], codes[j], values[j], enc)].append(j)
        if null[j] or (prefixes and codes[j].startswith(prefixes) and us[j] <= cut):
            by_code.setdefault(codes[j], j)
    code_pos = np.flatnonzero(types == TokenType.CODE)
    if len(code_pos) > len(dynamic):
        raise ValueError(f"align_events: the row has {len(code_pos)} code tokens but only {len(dynamic)} "
                         f"events of subject_id={tl.subject_id} are at or before the cut")
    out: list[int | None] = [None] * len(ids)
    for pos, i in zip(code_pos.tolist(), dynamic[len(dynamic) - len(code_pos):], strict=True):
        if vocab.id(str(tl.code[i])) != ids[pos]:
            raise ValueError(f"align_events: token {pos} of the row of subject_id={tl.subject_id} does not "
                             "match its event (was the row built from these events?)")
        enc = tl.enc[i]
        queue = by_content.get(_key(tl.t[i], tl.code[i], tl.value[i], enc))
        out[pos] = queue.popleft() if queue else None
    for pos in np.flatnonzero(types == TokenType.STATIC).tolist():
        out[pos] = by_code.get(vocab.token(int(ids[pos])))
    return out


FRAME_COLUMNS = ("kind", "code", "time", "visit", "attribution", "bin", "scaled_value", "value", "unit",
                 "tokens")


def events_frame(items: Sequence[EventAttribution]) -> pd.DataFrame:
    """Items as a table (:data:`FRAME_COLUMNS`; ``tokens`` = how many tokens the item spans)."""
    return pd.DataFrame([{"kind": e.kind, "code": e.code, "time": e.time, "visit": e.visit,
                          "attribution": e.attribution, "bin": e.bin, "scaled_value": e.scaled_value,
                          "value": e.value, "unit": e.unit, "tokens": len(e.positions)} for e in items],
                        columns=list(FRAME_COLUMNS))
