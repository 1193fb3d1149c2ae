"""Test doubles for the simulator: a model whose next-token distribution is fixed (one table row per mode,
the mode set by marker tokens seen in the prefix), so outcome probabilities have closed forms, and prefix
rows built token by token."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from ehrfm.models import EHRFoundationModel, InferenceCache, ModelConfig
from ehrfm.models.model import ModelOutput
from ehrfm.schema import TokenType
from ehrfm.vocab import Vocabulary

DAY0 = 18_000.0
"""Days since 1970 of the prefixes' last token (and their prediction time)."""


@dataclass
class ModeState:
    """The stub's recurrent state: which table row each sequence draws from."""

    mode: Tensor


class FixedModel(nn.Module):
    """``step`` returns log ``table[mode]`` (b, V); ``mode`` switches to k when ``markers[k]`` is input.
    ``inputs`` records every step's concept ids (what the model was shown)."""

    def __init__(self, table: Tensor, markers: list[int]) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=table.shape[1])
        self.table = table / table.sum(-1, keepdim=True)
        self.markers = markers
        self.inputs: list[Tensor] = []
        self.dummy = nn.Parameter(torch.zeros(1))

    def allocate_inference_cache(self, batch: int, dtype: torch.dtype | None = None) -> InferenceCache:
        """One :class:`ModeState` layer, mode 0."""
        return InferenceCache(layers=[ModeState(torch.zeros(batch, dtype=torch.long))], batch=batch)

    def step(self, tokens: dict[str, Tensor], cache: InferenceCache) -> ModelOutput:
        """Fixed log-probabilities of each sequence's mode."""
        c = tokens["concept_ids"]
        state = cache.layers[0]
        for k, marker in enumerate(self.markers):
            state.mode = torch.where(c == marker, k, state.mode)
        self.inputs.append(c.clone())
        return ModelOutput(hidden=torch.zeros(c.shape[0], 1), logits=self.table[state.mode].log())


def as_model(stub: FixedModel) -> EHRFoundationModel:
    """The stub typed as the model the simulator takes (it implements what the simulator calls)."""
    return cast(EHRFoundationModel, stub)


def distribution(vocab: Vocabulary, probs: dict[str, float]) -> Tensor:
    """(V,) probabilities: ``probs`` on their tokens, 0 elsewhere."""
    out = torch.zeros(len(vocab))
    for tok, p in probs.items():
        out[vocab.id(tok)] = p
    return out


TYPES = {"[CLS]": TokenType.SPECIAL, "[VS]": TokenType.VISIT_START, "[VE]": TokenType.VISIT_END,
         "[REG]": TokenType.REGISTER}


def prefix_batch(vocab: Vocabulary, rows: list[list[tuple[str, float]]]) -> dict[str, Tensor]:
    """Collated prompt-free prefixes from (token, days before DAY0) lists; visit orders and segments as the
    tokenizer writes them (one visit per [VS])."""
    width = max(len(r) for r in rows)
    out: dict[str, Any] = {k: torch.zeros(len(rows), width, dtype=torch.long)
                           for k in ("concept_ids", "type_ids", "visit_orders", "visit_segments")}
    out["times"] = torch.zeros(len(rows), width)
    out["ages"] = torch.zeros(len(rows), width)
    out["values"] = torch.full((len(rows), width), float("nan"))
    for i, row in enumerate(rows):
        order = 0
        for j, (tok, before) in enumerate(row):
            interval = tok.startswith(("[W", "[M", "[LT"))
            typ = TYPES.get(tok, TokenType.INTERVAL if interval else TokenType.CODE)
            order += typ == TokenType.VISIT_START
            out["concept_ids"][i, j] = vocab.id(tok)
            out["type_ids"][i, j] = typ
            out["times"][i, j] = DAY0 - before
            out["ages"][i, j] = 50.0
            out["visit_orders"][i, j] = order
            out["visit_segments"][i, j] = 0 if typ in (TokenType.SPECIAL, TokenType.INTERVAL) else 1
    out["lengths"] = torch.tensor([len(r) for r in rows])
    return out
