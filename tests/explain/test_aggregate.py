"""Tokens -> events -> visits: nothing lost or double counted, value-bin tokens join their code, and code
tokens are aligned back to the exact MEDS events they were written from (raw value, unit, time)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
from explain_fixtures import SPECS, TOKENIZE, finetuned, task_rows

from ehrfm.config.explain import IGSettings
from ehrfm.explain.aggregate import (
    EVENT,
    STATIC,
    STRUCTURE,
    EventAttribution,
    align_events,
    event_attributions,
    events_frame,
    visit_attributions,
)
from ehrfm.explain.explainer import explain_rows, kept_row
from ehrfm.prepare.bins import Bins
from ehrfm.schema import CODE, NUMERIC_VALUE, TIME, TokenType


def _cut(ev: pd.DataFrame) -> pd.Timestamp:
    return pd.Timestamp(ev[TIME].dropna().sort_values().iloc[29])


def test_items_partition_the_tokens(events: list[pd.DataFrame], vocab_bins: tuple[Any, Bins]) -> None:
    vocab, bins = vocab_bins
    row = kept_row(task_rows(events[:1], vocab, bins, SPECS[0].task)[0], 10_000)
    att = np.random.default_rng(0).normal(size=len(row["concept_ids"]))
    items = event_attributions(row, att, vocab)
    types = np.asarray(row["type_ids"])
    seen = sorted(p for it in items for p in it.positions)
    assert seen == sorted(np.flatnonzero(types != TokenType.TASK).tolist())  # every token once, prompts none
    assert sum(it.attribution for it in items) == pytest.approx(att[types != TokenType.TASK].sum())
    for it in items:
        kinds = [int(types[p]) for p in it.positions]
        if it.kind == EVENT:
            assert kinds[0] == TokenType.CODE and kinds[1:] in ([], [TokenType.VALUE_BIN])
            assert (it.bin is not None) == (len(kinds) == 2)
        else:
            assert len(kinds) == 1 and (it.kind == STATIC) == (kinds[0] == TokenType.STATIC)
    assert {EVENT, STATIC, STRUCTURE} <= {it.kind for it in items}
    visits = visit_attributions(items)
    assert sum(v.attribution for v in visits) == pytest.approx(sum(it.attribution for it in items))
    assert [v.visit for v in visits] == sorted({it.visit for it in items})
    assert list(events_frame(items)["tokens"]) == [len(it.positions) for it in items]
    with pytest.raises(ValueError, match="attributions for a row"):
        event_attributions(row, att[:-1], vocab)


@pytest.mark.parametrize("max_tokens", [10_000, 37])
def test_code_tokens_align_to_their_events(max_tokens: int, events: list[pd.DataFrame],
                                           vocab_bins: tuple[Any, Bins]) -> None:
    vocab, bins = vocab_bins
    for ev, full in zip(events, task_rows(events, vocab, bins, SPECS[0].task), strict=True):
        row = kept_row(full, max_tokens)
        src = align_events(row, ev, vocab, TOKENIZE, _cut(ev))
        types = np.asarray(row["type_ids"])
        code_pos = np.flatnonzero(types == TokenType.CODE)
        assert all(src[p] is not None for p in code_pos)
        assert len({src[p] for p in code_pos}) == len(code_pos)  # distinct events
        for p in code_pos:
            j = src[p]
            assert j is not None
            e = ev.iloc[j]
            assert vocab.id(e[CODE]) == row["concept_ids"][p]
            assert e[TIME] <= _cut(ev)
            assert abs(e[TIME].value / 86_400e9 - float(row["times"][p])) < 0.01  # days, float32 stream
            if p + 1 < len(types) and types[p + 1] == TokenType.VALUE_BIN:
                scaled = bins.scaled_value(e[CODE], float(e[NUMERIC_VALUE]))
                assert scaled == pytest.approx(float(row["values"][p + 1]), abs=1e-5)
        for p in np.flatnonzero(types == TokenType.STATIC):
            j = src[p]
            assert j is not None and vocab.id(ev.iloc[j][CODE]) == row["concept_ids"][p]
    # a row from another patient's events cannot be aligned
    row = kept_row(task_rows(events[:1], vocab, bins, SPECS[0].task)[0], 10_000)
    with pytest.raises(ValueError, match="subject_id="):
        align_events(row, events[1], vocab, TOKENIZE, _cut(events[1]))


def test_explained_events_carry_raw_values(events: list[pd.DataFrame], vocab_bins: tuple[Any, Bins]) -> None:
    vocab, bins = vocab_bins
    fm, spec = finetuned(vocab, "mamba2"), SPECS[0]
    rows = task_rows(events[:3], vocab, bins, spec.task)
    settings = IGSettings(steps=8, max_tokens=64)
    sources = [align_events(kept_row(r, 64), ev, vocab, TOKENIZE, _cut(ev)) for r, ev in zip(rows, events,
                                                                                           strict=False)]
    out = explain_rows(fm, spec, rows, settings, sources, events[:3])
    assert [len(x.tokens) for x in out] == [min(int(r["length"]), 64) for r in rows]  # cut, input order
    for x, ev in zip(out, events, strict=False):
        assert x.rel_error <= 0.01 and x.converged and x.target == "logit"
        assert x.tokens.sum() == pytest.approx(x.f_input - x.f_baseline, rel=0.01)
        valued = [e for e in x.events if e.kind == EVENT and e.bin is not None]
        assert valued and all(e.value is not None and e.source is not None for e in valued)
        for e in valued:
            assert e.source is not None
            assert e.value == pytest.approx(float(ev.iloc[e.source][NUMERIC_VALUE]))
        top = x.top(3)
        assert [abs(e.attribution) for e in top] == sorted((abs(e.attribution) for e in top), reverse=True)
        summary = x.summary(3)
        assert len(summary["events"]) == 3 and summary["converged"] and summary["target"] == "logit"


def test_describe_reads_like_a_sentence() -> None:
    ev = EventAttribution(EVENT, [4, 5], "LAB//LOINC//2160-0", pd.Timestamp("2030-01-02 14:00"), 3, 0.41,
                          bin="[Q7]", value=2.3, unit="mg/dL")
    assert ev.describe({"LAB//LOINC//2160-0": "Creatinine"}) == \
        "LAB//LOINC//2160-0 (Creatinine) 2.3 mg/dL on 2030-01-02 14:00: +0.410"
    ev.value = None
    assert ev.describe() == "LAB//LOINC//2160-0 [Q7] on 2030-01-02 14:00: +0.410"
    assert ev.to_dict()["time"] == "2030-01-02T14:00:00"
