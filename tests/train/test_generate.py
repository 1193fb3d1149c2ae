"""Generation from the recurrent state: cached step-by-step == uncached full forward, per backbone; ragged
prefill; a rollout step equals a re-forward of the extended sequence; forecast scores are DIAGNOSIS-only."""

from __future__ import annotations

import pytest
import torch

from ehrfm.models import EHRFoundationModel, ModelConfig
from ehrfm.models.model import STREAMS
from ehrfm.schema import SPECIAL_TOKENS
from ehrfm.train.generate import code_mask, forecast_scores, prefill, token_types, topk_codes
from ehrfm.vocab import Vocabulary

VOCAB = Vocabulary.build(["[W0]", *[f"DIAGNOSIS//X{i}" for i in range(10)],
                          *[f"LAB//Y{i}" for i in range(10)]])


def _model(backbone: str, code_features: bool = True) -> EHRFoundationModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(VOCAB), backbone=backbone, d_model=32, n_layers=2, headdim=16,
                      chunk_size=8, cpu_chunk_size=8,
                      max_len=64, dropout=0.0, use_code_counts=code_features, use_value_deltas=code_features)
    return EHRFoundationModel(cfg).eval()


def _batch(lengths: list[int], width: int = 20) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    b = len(lengths)
    batch = {"concept_ids": torch.randint(len(SPECIAL_TOKENS), len(VOCAB), (b, width), generator=g),
             "type_ids": torch.randint(1, 9, (b, width), generator=g),
             "ages": 40 + torch.rand(b, width, generator=g),
             "times": 18000 + 10 * torch.rand(b, width, generator=g),
             "visit_orders": torch.randint(0, 5, (b, width), generator=g),
             "visit_segments": torch.randint(0, 3, (b, width), generator=g),
             "values": torch.randn(b, width, generator=g).masked_fill(torch.rand(b, width, generator=g) < 0.5,
                                                                      float("nan"))}
    lens = torch.tensor(lengths)
    pad = torch.arange(width).unsqueeze(0) >= lens.unsqueeze(1)
    for k in STREAMS:
        batch[k] = batch[k].masked_fill(pad, 0)
    batch["lengths"] = lens
    return batch


@pytest.mark.parametrize("code_features", [False, True])
@pytest.mark.parametrize("backbone", ["mamba", "mamba2", "transformer"])
def test_cached_steps_match_full_forward(backbone: str, code_features: bool) -> None:
    model = _model(backbone, code_features)
    batch = _batch([20, 20])
    with torch.no_grad():
        full = model(**{k: batch[k] for k in STREAMS}).logits
        cache = model.allocate_inference_cache(2)
        for t in range(20):
            step = model.step({k: batch[k][:, t] for k in STREAMS}, cache).logits
            torch.testing.assert_close(step, full[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["mamba", "mamba2"])
def test_ragged_prefill_and_rollout_step(backbone: str) -> None:
    model = _model(backbone)
    batch = _batch([20, 7, 13])
    with torch.no_grad():
        full = model(**{k: batch[k] for k in STREAMS}).logits
        cache, last = prefill(model, batch)
        idx = batch["lengths"] - 1
        torch.testing.assert_close(last, full[torch.arange(3), idx], atol=1e-5, rtol=1e-5)
        # one generated token from the cache == a full forward of the sequence extended by it
        nxt = last.argmax(-1)
        ext = {k: torch.cat([batch[k], torch.zeros_like(batch[k][:, :1])], 1) for k in STREAMS}
        for r in range(3):
            for k in STREAMS:
                ext[k][r, idx[r] + 1] = nxt[r] if k == "concept_ids" else batch[k][r, idx[r]]
        step = model.step({k: ext[k][torch.arange(3), idx + 1] for k in STREAMS}, cache).logits
        refwd = model(**ext).logits[torch.arange(3), idx + 1]
        torch.testing.assert_close(step, refwd, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["mamba2", "transformer"])
def test_forecast_scores(backbone: str) -> None:
    model = _model(backbone)
    batch = _batch([20, 9])
    mask = code_mask(VOCAB)
    first = forecast_scores(model, batch, VOCAB, rollout_steps=0)
    assert torch.allclose(first.sum(-1), torch.ones(2), atol=1e-5) and torch.all(first[:, ~mask] == 0)
    rolled = forecast_scores(model, batch, VOCAB, rollout_steps=3)
    assert torch.all(rolled >= first - 1e-6) and torch.all(rolled[:, ~mask] == 0)  # more steps, more chances
    codes, probs = topk_codes(rolled, VOCAB, k=4)
    assert all(c.startswith("DIAGNOSIS//") for row in codes for c in row)
    assert all(row == sorted(row, reverse=True) for row in probs)


def test_token_types() -> None:
    types = token_types(VOCAB)
    assert types[VOCAB.id("[VS]")] == 2 and types[VOCAB.id("[W0]")] == 5 and types[
        VOCAB.id("DIAGNOSIS//X1")] == 6
