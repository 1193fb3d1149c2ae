"""Forecasting from the LM head: prefill the recurrent state token by token, then generate.

The forecast of ``next_visit_codes`` (diagnosis codes at the next encounter) is read from the LM head's
next-token distribution at the task row's trailing prompt token, restricted to ``DIAGNOSIS//`` codes and
renormalised over them (finetuning trains exactly this distribution: see ``forecast_loss`` in
:mod:`ehrfm.train.finetune`). Optionally (``rollout_steps > 0``) a greedy rollout continues the timeline
from the recurrent state, one O(1) :meth:`EHRFoundationModel.step` per generated token (never a
re-forward of the sequence), and a code's score is ``1 - prod_t (1 - p_t(code))`` over the first step and
the rollout steps (the chance it appears at least once). We default to the first-step distribution: it is
the quantity the finetuning loss targets, and greedy rollouts of a small model drift into repeated
interval/visit tokens; the rollout is there to show and test generation from the state.

Ragged batches (right padding) are prefilled together: after a row's last real token its state is
frozen (later steps overwrite nothing for it), so every row ends holding the state after its own last
token. The transformer's KV cache shares one length across the batch, so its rows run one at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from ehrfm.models import EHRFoundationModel, InferenceCache
from ehrfm.models.model import STREAMS
from ehrfm.schema import INTERVAL_TOKENS, REG, VE, VS, TokenType
from ehrfm.vocab import Vocabulary

DIAGNOSIS_PREFIX = "DIAGNOSIS//"


def token_types(vocab: Vocabulary) -> Tensor:
    """The ``type_ids`` stream value of every vocabulary token (V,), for tokens the model generates."""
    types = []
    for tok in vocab.tokens:
        if tok == VS:
            types.append(TokenType.VISIT_START)
        elif tok == VE:
            types.append(TokenType.VISIT_END)
        elif tok == REG:
            types.append(TokenType.REGISTER)
        elif tok in INTERVAL_TOKENS:
            types.append(TokenType.INTERVAL)
        elif tok.startswith("[TASK:"):
            types.append(TokenType.TASK)
        elif tok.startswith("[Q") and tok.endswith("]"):
            types.append(TokenType.VALUE_BIN)
        elif tok.startswith("["):
            types.append(TokenType.SPECIAL)
        else:
            types.append(TokenType.CODE)
    return torch.tensor(types, dtype=torch.long)


def code_mask(vocab: Vocabulary, prefix: str = DIAGNOSIS_PREFIX) -> Tensor:
    """Boolean (V,) mask of the tokens starting with ``prefix``."""
    return torch.tensor([t.startswith(prefix) for t in vocab.tokens])


def _kept(cur: Tensor, prev: Tensor, keep: Tensor) -> Tensor:
    """``prev``'s rows where ``keep`` (b,) is true, ``cur``'s elsewhere; both (b, ...)."""
    return torch.where(keep.view(-1, *([1] * (cur.dim() - 1))), prev, cur)


def _freeze(new: Any, old: Any, keep: Tensor) -> None:
    """Where ``keep`` (b,) is true, put ``old``'s tensors back into ``new`` (per-layer state dataclass)."""
    for f in dataclasses.fields(new):
        cur, prev = getattr(new, f.name), getattr(old, f.name)
        if isinstance(cur, Tensor):
            cur.copy_(_kept(cur, prev, keep))


@torch.no_grad()
def prefill(model: EHRFoundationModel, batch: dict[str, Tensor]) -> tuple[InferenceCache, Tensor]:
    """Run every row of ``batch`` (streams (b, l), ``lengths`` (b,)) through :meth:`step`.

    Returns the cache holding each row's state after its last real token, and the logits (b, V) there.
    Ragged batches need a Mamba backbone (the transformer's shared KV length cannot be frozen per row).
    """
    lengths = batch["lengths"]
    b = lengths.shape[0]
    recurrent = model.config.backbone != "transformer"
    if not recurrent and b > 1:
        raise ValueError("prefill(): a transformer batch must hold one row (its KV cache has one length)")
    cache = model.allocate_inference_cache(b)
    last = torch.zeros(b, model.config.vocab_size, device=lengths.device)
    for t in range(int(lengths.max())):
        before = [] if not recurrent else [dataclasses.replace(s,
                                                               **{f.name: getattr(s, f.name).clone()
                                                                  for f in dataclasses.fields(s)
                                            if isinstance(getattr(s, f.name), Tensor)}) for s in cache.layers]
        extra_before = {k: v.clone() for k, v in cache.extra.items()}
        out = model.step({k: batch[k][:, t] for k in STREAMS if k in batch}, cache)
        done = lengths <= t  # rows already past their last token keep their state
        for new, old in zip(cache.layers if recurrent else [], before, strict=True):
            _freeze(new, old, done)
        for key, old_extra in extra_before.items():  # and their last token's time and per-code tables
            cache.extra[key] = _kept(cache.extra[key], old_extra, done)
        at_end = lengths - 1 == t
        last[at_end] = out.logits.float()[at_end]  # type: ignore[union-attr]
    return cache, last


@torch.no_grad()
def forecast_scores(model: EHRFoundationModel, batch: dict[str, Tensor], vocab: Vocabulary,
                    rollout_steps: int = 0,
                    first_logits: Tensor | None = None, prefix: str = DIAGNOSIS_PREFIX) -> Tensor:
    """Per-code scores (b, V) in [0, 1], zero outside ``prefix`` codes.

    ``first_logits`` (b, V): the LM logits at each row's last token when already computed by a full
    forward (equal to the prefill's within float error; see the tests), else they come from the prefill.
    """
    mask = code_mask(vocab, prefix).to(batch["lengths"].device)
    if rollout_steps == 0 and first_logits is not None:
        return _restricted(first_logits, mask)
    if model.config.backbone == "transformer" and batch["lengths"].shape[0] > 1:
        rows = [forecast_scores(model, {k: v[i : i + 1] for k, v in batch.items()}, vocab, rollout_steps,
                                None,
                                prefix) for i in range(batch["lengths"].shape[0])]
        return torch.cat(rows)
    cache, logits = prefill(model, batch)
    score = _restricted(logits, mask)
    miss = 1.0 - score  # P(code not seen yet)
    types = token_types(vocab)
    idx = (batch["lengths"] - 1).unsqueeze(1)
    # generated tokens inherit the last token's age/time/visit; never its measured value (they have none)
    ctx = {k: batch[k].gather(1, idx).squeeze(1) for k in STREAMS if k in batch and k not in ("concept_ids",
                                                                                               "type_ids",
                                                                                               "values")}
    for _ in range(rollout_steps):
        nxt = logits.argmax(-1)  # greedy: the most likely next token
        # ages/times/visit: the last known values
        step_in = {"concept_ids": nxt, "type_ids": types[nxt], **ctx}
        logits = model.step(step_in, cache).logits.float()  # type: ignore[union-attr]
        miss = miss * (1.0 - torch.softmax(logits, -1) * mask)
    return 1.0 - miss


def _restricted(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the ``mask`` tokens only (b, V), zero elsewhere."""
    masked = logits.float().masked_fill(~mask, float("-inf"))
    return torch.softmax(masked, -1).nan_to_num(0.0)


def topk_codes(scores: Tensor, vocab: Vocabulary, k: int = 10) -> tuple[list[list[str]], list[list[float]]]:
    """Top-``k`` codes and scores per row from (b, V) scores."""
    vals, ids = scores.topk(min(k, scores.shape[-1]), dim=-1)
    codes = [[vocab.token(int(i)) for i in row] for row in ids]
    return codes, [[float(v) for v in row] for row in vals]


def sample_tokens(logits: Tensor, temperature: float = 1.0, top_p: float = 1.0,
                  generator: torch.Generator | None = None, banned: Tensor | None = None) -> Tensor:
    """One token id per row drawn from ``softmax(logits / temperature)`` restricted to its top-p nucleus.

    logits (b, V); ``banned`` (V,) bool: tokens never drawn (padding, prompt tokens). ``top_p`` 1 keeps the
    whole distribution (no sort); below 1 keeps the smallest set of most likely tokens whose mass reaches
    ``top_p`` (at least one token). ``generator`` makes the draw reproducible. Returns (b,) long.

    The draw inverts the cumulative distribution (one uniform per row, a binary search): on a CPU ~15x faster
    than ``torch.multinomial`` for a few thousand rows; a token of probability 0 is never drawn.
    """
    if temperature <= 0:
        raise ValueError(f"sample_tokens(): temperature must be > 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"sample_tokens(): top_p must be in (0, 1], got {top_p}")
    scaled = logits.float() / temperature
    if banned is not None:
        scaled = scaled.masked_fill(banned.to(scaled.device), float("-inf"))
    probs = torch.softmax(scaled, -1)
    if top_p < 1:
        sorted_p, order = probs.sort(-1, descending=True)
        # drop a token when the mass before it already reaches top_p (the most likely token always stays)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
    cdf = probs.cumsum(-1)
    # strictly inside the total mass, so float rounding never lands past the last token that has mass
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:] * (1.0 - 1e-6)
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)
