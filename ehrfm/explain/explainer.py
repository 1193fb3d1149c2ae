"""Explain task rows of a finetuned model: integrated gradients per row, grouped into events and visits.

:func:`explain_rows` is the one entry point of the population stage, serving and the notebook: token rows
(TOKENS_SCHEMA dicts) of one task in, one :class:`RowExplanation` per row out, batched within the
settings' token budget. Rows longer than ``settings.max_tokens`` are cut to their most recent tokens, as
the collator cuts them for prediction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ehrfm.config.explain import IGSettings
from ehrfm.data.collate import padded_length
from ehrfm.data.multitask import MultiTaskCollator
from ehrfm.devices import to_device
from ehrfm.explain.aggregate import (
    EventAttribution,
    VisitAttribution,
    event_attributions,
    top_events,
    visit_attributions,
)
from ehrfm.explain.ig import IntegratedGradients
from ehrfm.schema import TOKEN_STREAMS
from ehrfm.train.heads import HeadSpec
from ehrfm.train.predict import FinetunedModel


@dataclass
class RowExplanation:
    """The explanation of one task row: what was attributed, the completeness check, and the items."""

    task: str
    target: str
    """``logit`` (binary) or ``risk_logit`` (time-to-event): the raw head output, before calibration."""
    f_input: float
    f_baseline: float
    rel_error: float
    """Completeness error: |sum of attributions - (f_input - f_baseline)| / max(|f_input - f_baseline|,
    1e-3)."""
    converged: bool
    steps: int
    events: list[EventAttribution]
    tokens: np.ndarray
    """Per-token attributions (n,) of the kept row."""
    row: dict[str, np.ndarray] = field(repr=False)
    """The kept row's streams (the most recent ``n`` tokens)."""

    def visits(self) -> list[VisitAttribution]:
        """Attribution per visit."""
        return visit_attributions(self.events)

    def top(self, k: int) -> list[EventAttribution]:
        """The ``k`` events (or static codes) with the largest |attribution|."""
        return top_events(self.events, k)

    def summary(self, top_k: int) -> dict[str, Any]:
        """JSON-ready: target, f values, the completeness check and the top-k events."""
        return {"target": self.target, "baseline": "pad", "f_input": self.f_input,
                "f_baseline": self.f_baseline, "sum_attributions": float(self.tokens.sum()),
                "rel_error": self.rel_error, "converged": self.converged, "steps": self.steps,
                "events": [e.to_dict() for e in self.top(top_k)]}


def kept_row(row: Mapping[str, Any], max_tokens: int) -> dict[str, np.ndarray]:
    """The streams of ``row`` cut to its most recent ``max_tokens`` tokens (what the collator keeps)."""
    n = min(int(row["length"]), max_tokens)
    return {k: np.asarray(row[k])[len(row[k]) - n:] for k in TOKEN_STREAMS}


def _batches(rows: Sequence[Mapping[str, Any]], max_tokens: int, budget: int) -> list[list[int]]:
    """Row indices in batches of similar length, each at most ``budget`` padded tokens (at least one row)."""
    widths = [padded_length(int(r["length"]), 8, max_tokens) for r in rows]
    order = np.argsort(widths, kind="stable").tolist()
    out: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        if cur and widths[i] * (len(cur) + 1) > budget:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out


def explain_rows(fm: FinetunedModel, spec: HeadSpec, rows: Sequence[Mapping[str, Any]],
                 settings: IGSettings | None = None,
                 sources: Sequence[Sequence[int | None] | None] | None = None,
                 events: Sequence[pd.DataFrame | None] | None = None) -> list[RowExplanation]:
    """One :class:`RowExplanation` per row of ``spec.task`` (in input order).

    ``sources[i]``/``events[i]``: optional :func:`~ehrfm.explain.aggregate.align_events` of row ``i`` (over
    its KEPT tokens) and the events frame it indexes, for raw values, units and exact times.
    """
    cfg = settings or IGSettings()
    ig = IntegratedGradients(fm.model, fm.heads, spec, cfg)
    collate = MultiTaskCollator(cfg.max_tokens)
    device = next(fm.model.parameters()).device  # rows go where the model is (a served model may be on a GPU)
    out: list[RowExplanation | None] = [None] * len(rows)
    for idx in _batches(rows, cfg.max_tokens, cfg.batch_tokens):
        batch = to_device(collate([{**rows[i], "task_idx": 0} for i in idx]), device)
        att = ig.explain(batch)
        for j, i in enumerate(idx):
            kept = kept_row(rows[i], cfg.max_tokens)
            n = len(kept["concept_ids"])
            tokens = att.tokens[j, :n]
            src = sources[i] if sources is not None else None
            ev = events[i] if events is not None else None
            out[i] = RowExplanation(spec.task, att.target, float(att.f_input[j]), float(att.f_baseline[j]),
                                    float(att.rel_error[j]), bool(att.converged[j]), int(att.steps[j]),
                                    event_attributions(kept, tokens, fm.vocab, src, ev), tokens, kept)
    return [r for r in out if r is not None]
