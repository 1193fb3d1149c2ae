"""Sample M futures per task row from the pretrained model's recurrent state and decide each future's outcome.

For a batch of task rows (collated streams (R, L) and ``lengths``):

1. **Prompt-free prefix** (:func:`strip_prompt`): a task row is ``[TASK:t] static visits… [TASK:t]`` and holds
   nothing after prediction time; the pretrained model never saw prompt tokens, so the leading one becomes
   ``[CLS]`` (what a pretraining row starts with) and the trailing one is dropped. Nothing else is added.
2. **Prefill** (:func:`prefill_rows`): one O(1) ``step`` per prefix token, rows together (longest first, each
   step on the rows still running, as views of the cache: no state copies), then the cache is repeated M
   times, so the batch is R×M futures (row r owns futures r·M … r·M+M-1).
3. **Generate**: each step draws one token per future (temperature / top-p,
   :func:`~ehrfm.train.generate.sample_tokens`; padding, ``[CLS]``, ``[MASK]`` and prompt tokens are never
   drawn), gives it the streams the tokenizer would (type; time = the clock of :mod:`ehrfm.simulate.clock`;
   age advanced with the clock; visit order +1 at ``[VS]``; segment 1/2 inside visits, 0 on interval tokens;
   value-bin tokens the fitted mean value), decides the outcome by the task's :class:`OutcomeRule`, and feeds
   the token to ``model.step`` — never a re-forward. Decided futures leave the batch (the cache is compacted
   once a quarter of it is done).
4. A future still undecided after ``max_steps`` generated tokens is **truncated**;
   :mod:`ehrfm.simulate.estimate` counts it and applies the configured policy.

The transformer's KV cache has one length for the batch and ``max_len`` slots: its rows are simulated one at
a time (M futures share the length) and a future runs at most ``max_len - prefix`` steps.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ehrfm.models import EHRFoundationModel, InferenceCache
from ehrfm.models.model import STREAMS
from ehrfm.schema import CLS, INTERVAL_TOKENS, UNK, TokenType, task_token
from ehrfm.simulate.clock import StreamTables, bin_index, interval_table, visit_classes
from ehrfm.simulate.rules import OutcomeRule
from ehrfm.train.generate import prefill, sample_tokens, token_types
from ehrfm.vocab import Vocabulary

UNDECIDED, NEGATIVE, POSITIVE, EXCLUDED, TRUNCATED = -2, 0, 1, 2, -1
"""Outcome codes of a future."""
DAYS_PER_YEAR = 365.25


@dataclass(frozen=True)
class TokenInfo:
    """Per-token tables (V,) the generator reads, built once per vocabulary."""

    types: Tensor
    interval: Tensor
    """(V, 2) float64 gap range of interval tokens, NaN elsewhere."""
    visit_class: Tensor
    bins: Tensor
    banned: Tensor
    """(V,) bool: never generated."""
    cls_id: int

    @classmethod
    def from_vocab(cls, vocab: Vocabulary) -> TokenInfo:
        """The tables of ``vocab``."""
        types = token_types(vocab)
        if UNK in vocab:
            types[vocab.id(UNK)] = TokenType.CODE  # the tokenizer writes unknown codes as CODE tokens
        banned = torch.tensor([t in ("[PAD]", "[MASK]", CLS) or t.startswith("[TASK:") for t in vocab.tokens])
        return cls(types, interval_table(vocab), visit_classes(vocab)[0], bin_index(vocab), banned,
                   vocab.id(CLS))

    def to(self, device: torch.device | str) -> TokenInfo:
        """The same tables on ``device``."""
        return TokenInfo(self.types.to(device), self.interval.to(device), self.visit_class.to(device),
                         self.bins.to(device), self.banned.to(device), self.cls_id)


@dataclass
class FutureOutcomes:
    """Per-future results, (R, M) each."""

    outcome: Tensor
    """int8: 1 positive, 0 negative, 2 excluded (death under ``death: exclude``), -1 truncated."""
    event_days: Tensor
    """float64: days after prediction time of the outcome event (>= 0; NaN when there is none)."""
    steps: Tensor
    """long: tokens generated."""


@dataclass(frozen=True)
class Settings:
    """Sampling settings of one simulation."""

    samples: int
    temperature: float = 1.0
    top_p: float = 1.0
    max_steps: int = 2048
    compact_below: float = 0.75
    """Compact the batch when fewer than this share of its futures are still undecided."""


def strip_prompt(batch: dict[str, Tensor], vocab: Vocabulary, task: str,
                 subject_ids: list[int] | None = None) -> dict[str, Tensor]:
    """Task rows (R, L) -> prompt-free prefixes: the leading ``[TASK:task]`` becomes ``[CLS]`` (type SPECIAL),
    the trailing one is dropped (``lengths`` - 1). Raises ``ValueError`` naming the record when a row does not
    start and end with the task's prompt token."""
    tok = vocab.id(task_token(task))
    lengths = batch["lengths"]
    ids = batch["concept_ids"]
    last = ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    bad = (lengths < 2) | (ids[:, 0] != tok) | (last != tok)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        who = f"subject_id={subject_ids[i]}" if subject_ids is not None else f"row {i}"
        raise ValueError(f"task {task!r}, record {who}: field concept_ids must start and end with the task's "
                         "prompt token (a task row written by `ehrfm tokenize`)")
    out = {k: v.clone() for k, v in batch.items()}
    out["concept_ids"][:, 0] = vocab.id(CLS)
    out["type_ids"][:, 0] = TokenType.SPECIAL
    out["lengths"] = lengths - 1
    return out


@torch.no_grad()
def prefill_rows(model: EHRFoundationModel, batch: dict[str, Tensor]) -> tuple[InferenceCache, Tensor]:
    """The state after each row's last token and the logits (R, V) there; equal to
    :func:`ehrfm.train.generate.prefill` (a test checks it) without its per-step copy-and-restore of every
    row's state: rows run longest first and step t feeds only the rows longer than t, through views of the
    leading cache rows that the mixers update in place (a field a step replaces is copied back). The
    transformer's KV cache has one length: its batches hold one row and go through ``prefill``."""
    lengths = batch["lengths"]
    if model.config.backbone == "transformer":
        return prefill(model, batch)
    order = torch.argsort(lengths, descending=True, stable=True)
    rows = {k: v.index_select(0, order) for k, v in batch.items() if k in STREAMS}
    lens = lengths.index_select(0, order)
    b = int(lens.shape[0])
    cache = model.allocate_inference_cache(b)
    last = torch.zeros(b, model.config.vocab_size, device=lens.device)
    for t in range(int(lens.max())):
        k = int((lens > t).sum())
        views = [dataclasses.replace(s, **{f.name: getattr(s, f.name)[:k] for f in dataclasses.fields(s)
                                           if isinstance(getattr(s, f.name), Tensor)}) for s in cache.layers]
        sub = InferenceCache(layers=views, batch=k, extra={n: v[:k] for n, v in cache.extra.items()})
        logits = model.step({n: v[:k, t] for n, v in rows.items()}, sub).logits
        assert logits is not None
        _write_back(cache, sub, k)
        ends = (lens[:k] - 1 == t).nonzero().squeeze(1)
        last[ends] = logits.float()[ends]
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(b, device=order.device)
    _select(cache, inverse)
    return cache, last[inverse]


def _write_back(cache: InferenceCache, sub: InferenceCache, k: int) -> None:
    """Copy into the leading ``k`` cache rows what a step on the view cache ``sub`` replaced instead of
    updating in place (the first step creates the per-row tables at full batch size: kept as they are)."""
    for full, view in zip(cache.layers, sub.layers, strict=True):
        for f in dataclasses.fields(full):
            new, old = getattr(view, f.name), getattr(full, f.name)
            if isinstance(new, Tensor) and new.data_ptr() != old.data_ptr():
                old[:k].copy_(new)
    for name, new in sub.extra.items():
        if not isinstance(new, Tensor):
            continue
        old = cache.extra.get(name)
        if old is None:
            cache.extra[name] = new  # created by the first step, when every row runs (k = batch)
        elif new.data_ptr() != old.data_ptr():
            old[:k].copy_(new)


def _select(cache: InferenceCache, idx: Tensor) -> None:
    """Keep (and reorder / repeat) the cache rows ``idx`` in place."""
    for state in cache.layers:
        for f in dataclasses.fields(state):
            value = getattr(state, f.name)
            if isinstance(value, Tensor):
                setattr(state, f.name, value.index_select(0, idx))
    cache.extra = {k: v.index_select(0, idx) if isinstance(v, Tensor) else v for k, v in cache.extra.items()}
    cache.batch = int(idx.shape[0])


@dataclass
class _Live:
    """Per-future running state of the futures still in the batch (all (b,))."""

    ids: Tensor  # future index into the (R*M,) results
    clock: Tensor  # float64 days since 1970
    clock0: Tensor
    age0: Tensor
    pred: Tensor  # prediction time, days since 1970
    order: Tensor
    vclass: Tensor
    open: Tensor  # the index visit is still open
    prev_type: Tensor
    prev_concept: Tensor
    done: Tensor  # decided while still in the batch

    def select(self, keep: Tensor) -> _Live:
        """The futures at positions ``keep``."""
        return _Live(**{f.name: getattr(self, f.name)[keep] for f in dataclasses.fields(self)})


def _initial(batch: dict[str, Tensor], info: TokenInfo, pred_days: Tensor) -> _Live:
    """State after each prefix's last token (R,)."""
    lengths = batch["lengths"]
    idx = (lengths - 1).unsqueeze(1)

    def last(k: str) -> Tensor:
        return batch[k].gather(1, idx).squeeze(1)

    types, ids = batch["type_ids"].long(), batch["concept_ids"].long()
    pos = torch.arange(types.shape[1], device=types.device).unsqueeze(0)
    valid = pos < lengths.unsqueeze(1)
    last_vs = torch.where(valid & (types == TokenType.VISIT_START), pos, -1).max(1).values
    last_ve = torch.where(valid & (types == TokenType.VISIT_END), pos, -1).max(1).values
    is_open = last_vs > last_ve
    cls_tok = info.visit_class[ids]
    after = valid & (pos > last_vs.unsqueeze(1)) & (cls_tok > 0)
    cls_pos = torch.where(after, pos, -1).max(1).values
    cls_last = cls_tok.gather(1, cls_pos.clamp(min=0).unsqueeze(1)).squeeze(1)
    vclass = torch.where(is_open & (cls_pos >= 0), cls_last, 0)
    clock = last("times").double()
    r = lengths.shape[0]
    return _Live(ids=torch.arange(r, device=types.device), clock=clock, clock0=clock.clone(),
                 age0=last("ages").double(),
                 pred=pred_days.double(), order=last("visit_orders").long(), vclass=vclass, open=is_open,
                 prev_type=last("type_ids").long(), prev_concept=ids.gather(1, idx).squeeze(1),
                 done=torch.zeros(r, dtype=torch.bool, device=types.device))


def _decide(rule: OutcomeRule, x: Tensor, rel: Tensor, was_open: Tensor, closes: Tensor
            ) -> tuple[Tensor, Tensor]:
    """Outcome code (b,) int8 (UNDECIDED where nothing is decided yet) and event day (b,) for generated tokens
    ``x`` at ``rel`` days after prediction time, with the index visit open before the token (``was_open``) and
    closed by it (``closes``)."""
    pos = torch.zeros_like(x, dtype=torch.bool)
    neg = torch.zeros_like(pos)
    if rule.duration_days is not None:
        pos = was_open & (rel > rule.duration_days - rule.index_offset_days)  # outlasted the duration
        neg = ~pos & (closes | ~was_open)  # closed (or was never open) first
    else:
        in_window = torch.ones_like(pos)
        ended = torch.zeros_like(pos)
        if rule.within_days is not None:
            in_window &= rel <= rule.within_days
            ended |= rel > rule.within_days
        if rule.until_visit_end:
            in_window &= was_open & ~closes
            ended |= closes | ~was_open
        counts = rule.outcome_mask[x] & (~was_open if rule.other_encounter else torch.ones_like(pos))
        pos = counts & in_window
        neg = ~pos & ended
    death = rule.death_mask[x] & ~pos & ~neg
    out = torch.full(x.shape, UNDECIDED, dtype=torch.int8, device=x.device)
    out[neg] = NEGATIVE
    out[death] = EXCLUDED if rule.death_excludes else NEGATIVE
    out[pos] = POSITIVE
    return out, torch.where(pos, rel.clamp(min=0.0), torch.full_like(rel, float("nan")))


@torch.no_grad()
def simulate_rows(model: EHRFoundationModel, batch: dict[str, Tensor], pred_days: Tensor, rule: OutcomeRule,
                  info: TokenInfo, tables: StreamTables, settings: Settings,
                  generator: torch.Generator | None = None) -> FutureOutcomes:
    """M = ``settings.samples`` futures of each prompt-free prefix in ``batch`` (streams (R, L), ``lengths``
    (R,); see :func:`strip_prompt`) and their outcomes; ``pred_days`` (R,) the rows' prediction times in days
    since 1970. A transformer batch must hold one row."""
    m = settings.samples
    r = int(batch["lengths"].shape[0])
    max_steps = settings.max_steps
    if model.config.backbone == "transformer":
        max_steps = min(max_steps, model.config.max_len - int(batch["lengths"].max()))
    cache, logits = prefill_rows(model, batch)
    dev = logits.device
    rep = torch.arange(r, device=dev).repeat_interleave(m)
    _select(cache, rep)
    live = _initial(batch, info, pred_days).select(rep)
    live.ids = torch.arange(r * m, device=dev)
    logits = logits[rep]
    outcome = torch.full((r * m,), UNDECIDED, dtype=torch.int8, device=dev)
    event = torch.full((r * m,), float("nan"), dtype=torch.float64, device=dev)
    steps = torch.zeros(r * m, dtype=torch.long, device=dev)
    if rule.until_visit_end or rule.duration_days is not None:  # the window is the index visit: none, none
        outcome[~live.open] = NEGATIVE
        live.done = ~live.open
    for _ in range(max_steps):
        if bool(live.done.all()):
            break
        if float((~live.done).float().mean()) < settings.compact_below:
            keep = ~live.done
            live, logits = live.select(keep), logits[keep]
            _select(cache, keep.nonzero().squeeze(1))
        x = sample_tokens(logits, settings.temperature, settings.top_p, generator, info.banned)
        tokens = _advance(live, x, info, tables, generator)
        rel = live.clock - live.pred
        code, day = _decide(rule, x, rel, tokens.pop("_was_open").bool(), tokens.pop("_closes").bool())
        active = ~live.done
        steps[live.ids[active]] += 1
        decided = active & (code != UNDECIDED)
        outcome[live.ids[decided]] = code[decided]
        event[live.ids[decided]] = day[decided]
        live.done |= decided
        if bool(live.done.all()):
            break
        logits = model.step(tokens, cache).logits.float()  # type: ignore[union-attr]
    outcome[outcome == UNDECIDED] = TRUNCATED
    return FutureOutcomes(outcome.view(r, m).cpu(), event.view(r, m).cpu(), steps.view(r, m).cpu())


def _advance(live: _Live, x: Tensor, info: TokenInfo, tables: StreamTables, generator: torch.Generator | None
             ) -> dict[str, Any]:
    """Advance the running state by the generated tokens ``x`` (b,) and return their stream inputs (plus
    ``_was_open`` / ``_closes`` for the outcome rule)."""
    typ = info.types[x]
    is_interval = typ == TokenType.INTERVAL
    # an event generated now lies after prediction time: gaps are drawn above the time still missing
    missing = live.pred - live.clock
    lo_hi = info.interval[x]
    lo = torch.maximum(lo_hi[:, 0], missing)
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64, device=x.device)
    gap = torch.where(is_interval, torch.where(lo < lo_hi[:, 1], lo + u * (lo_hi[:, 1] - lo), missing), 0.0)
    # a code advances the clock unless it opens its visit (the visit's first event is the visit's time)
    timed = (typ == TokenType.CODE) & (live.prev_type != TokenType.VISIT_START) & (
        live.prev_type != TokenType.INTERVAL)
    gap = torch.where(timed, tables.sample_gap(live.vclass, x, generator, missing), gap)
    live.clock = live.clock + gap.nan_to_num(0.0)
    was_open = live.open.clone()
    opens = typ == TokenType.VISIT_START
    closes = was_open & ((typ == TokenType.VISIT_END) | is_interval | opens)
    live.open = was_open & ~closes
    live.order = live.order + opens.long()
    new_cls = info.visit_class[x]
    live.vclass = torch.where(opens | is_interval, 0, torch.where(new_cls > 0, new_cls, live.vclass))
    outside = is_interval | (typ == TokenType.SPECIAL) | (live.order < 1)
    segment = torch.where(outside, 0, 1 + (live.order - 1) % 2)
    values = tables.bin_value(live.prev_concept, info.bins[x]).float()
    live.prev_type, live.prev_concept = typ, x
    ages = live.age0 + (live.clock - live.clock0) / DAYS_PER_YEAR
    return {"concept_ids": x, "type_ids": typ, "ages": ages.float(), "times": live.clock.float(),
            "visit_orders": live.order, "visit_segments": segment, "values": values,
            "_was_open": was_open, "_closes": closes}


__all__ = ["EXCLUDED", "INTERVAL_TOKENS", "NEGATIVE", "POSITIVE", "TRUNCATED", "FutureOutcomes", "Settings",
           "TokenInfo", "simulate_rows", "strip_prompt"]
