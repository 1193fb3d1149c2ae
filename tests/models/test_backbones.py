"""Every backbone: shapes, causality, recurrent step == full forward, tied head, pooling."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from ehrfm.models import EHRFoundationModel, ModelConfig, pool
from ehrfm.models.model import STREAMS

BACKBONES = ["mamba", "mamba2", "mamba3", "transformer"]
V = 40


def _model(backbone: str, dropout: float = 0.0) -> EHRFoundationModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=V, backbone=backbone, d_model=32, n_layers=2, d_state=8, headdim=16,
                      chunk_size=8, cpu_chunk_size=8, n_heads=4, dropout=dropout, max_len=64)
    return EHRFoundationModel(cfg).eval()


def _streams(b: int = 2, length: int = 19) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "concept_ids": torch.randint(1, V, (b, length), generator=g),
        "type_ids": torch.randint(0, 10, (b, length), generator=g),
        "ages": torch.rand(b, length, generator=g) * 80,
        "times": 18000 + torch.rand(b, length, generator=g) * 3000,
        "visit_orders": torch.randint(0, 6, (b, length), generator=g),
        "visit_segments": torch.randint(0, 3, (b, length), generator=g),
        # about half the tokens carry a value (value-bin tokens); NaN = no value
        "values": torch.randn(b, length, generator=g).masked_fill(torch.rand(b, length, generator=g) < 0.5,
                                                                  float("nan")),
    }


@pytest.mark.parametrize("backbone", BACKBONES)
def test_shapes_and_causality(backbone: str) -> None:
    model, s = _model(backbone), _streams()
    with torch.no_grad():
        out = model(**s)
        assert out.hidden.shape == (2, 19, 32)
        assert out.logits is not None and out.logits.shape == (2, 19, V)
        changed = {k: v.clone() for k, v in s.items()}
        changed["concept_ids"][:, 12] = (changed["concept_ids"][:, 12] % (V - 1)) + 1
        changed["ages"][:, 12] += 5.0
        changed["values"][:, 12] = 3.0
        out2 = model(**changed)
    assert out2.logits is not None
    torch.testing.assert_close(out2.logits[:, :12], out.logits[:, :12], rtol=0, atol=1e-6)
    assert (out2.logits[:, 12:] - out.logits[:, 12:]).abs().max() > 1e-4  # the change does propagate forward


@pytest.mark.parametrize("backbone", BACKBONES)
def test_step_equals_forward(backbone: str) -> None:
    model, s = _model(backbone), _streams()
    with torch.no_grad():
        full = model(**s)
        cache = model.allocate_inference_cache(2)
        steps = [model.step({k: v[:, t] for k, v in s.items()}, cache) for t in range(19)]
    stepped = torch.stack([o.logits for o in steps if o.logits is not None], dim=1)
    assert full.logits is not None
    torch.testing.assert_close(stepped, full.logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(torch.stack([o.hidden for o in steps], 1), full.hidden, rtol=1e-4, atol=1e-4)
    assert cache.seen == 19


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backward_reaches_every_parameter(backbone: str) -> None:
    model = _model(backbone, dropout=0.1).train()
    out = model(**_streams())
    assert out.logits is not None
    out.logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    # the padding row of the concept embedding gets no gradient by design; nothing else may be missing
    assert missing == [], missing


def test_lm_head_is_tied_to_concept_embedding() -> None:
    model = _model("mamba")
    assert model.lm_head.weight is model.embeddings.concept.weight
    untied = EHRFoundationModel(ModelConfig(vocab_size=V, d_model=16, n_layers=1, tie_embeddings=False))
    tied = EHRFoundationModel(ModelConfig(vocab_size=V, d_model=16, n_layers=1, tie_embeddings=True))
    assert untied.lm_head.weight is not untied.embeddings.concept.weight
    assert untied.num_parameters() - tied.num_parameters() == V * 16  # exactly one output matrix saved


def test_pool_returns_last_real_token() -> None:
    hidden = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)
    pooled = pool(hidden, torch.tensor([5, 2]))
    torch.testing.assert_close(pooled, torch.stack([hidden[0, 4], hidden[1, 1]]))
    with pytest.raises(ValueError, match="lengths"):
        pool(hidden, torch.tensor([0, 2]))


def test_right_padding_does_not_change_real_positions() -> None:
    model, s = _model("mamba2"), _streams(1, 11)
    padded = {k: torch.cat([v, torch.zeros_like(v[:, :5])], dim=1) for k, v in s.items()}
    with torch.no_grad():
        a, b = model(**s), model(**padded)
    assert a.logits is not None and b.logits is not None
    torch.testing.assert_close(b.logits[:, :11], a.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pool(b.hidden, torch.tensor([11])), a.hidden[:, -1])


def test_step_rejects_unknown_streams_and_batch_mismatch() -> None:
    model = _model("transformer")
    cache = model.allocate_inference_cache(2)
    with pytest.raises(ValueError, match="unknown stream"):
        model.step({"concept_ids": torch.ones(2, dtype=torch.long), "agez": torch.ones(2)}, cache)
    with pytest.raises(ValueError, match="batch"):
        model.step({"concept_ids": torch.ones(3, dtype=torch.long)}, cache)
    assert set(STREAMS) >= {"concept_ids", "ages"}


def test_out_of_vocabulary_ids_fail_clearly() -> None:
    model = _model("mamba")
    with pytest.raises(ValueError, match="vocab_size=40"):
        model(concept_ids=torch.tensor([[1, 2, V]]))


@pytest.mark.gpu
@pytest.mark.parametrize("backbone", BACKBONES)
def test_cuda_matches_cpu_and_steps(backbone: str) -> None:
    model, s = _model(backbone), _streams()
    with torch.no_grad():
        cpu = model(**s).logits
        gpu_model = model.to("cuda")
        gs = {k: v.cuda() for k, v in s.items()}
        gpu = gpu_model(**gs).logits
        cache = gpu_model.allocate_inference_cache(2)
        stepped = torch.stack([gpu_model.step({k: v[:, t] for k, v in gs.items()}, cache).logits  # type: ignore[misc]
                               for t in range(19)], dim=1)
    assert cpu is not None and gpu is not None
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(stepped, gpu, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize(("backbone", "mimo_rank"), [("mamba2", 1), ("mamba3", 1), ("mamba3", 2)])
def test_cpu_chunk_is_a_speed_setting(backbone: str, mimo_rank: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU the scan runs with ``cpu_chunk_size`` (not ``chunk_size``), and the chunk only regroups the
    scan's sums: a model run with chunks of 4 and of 32 (one chunk for these 29 tokens) gives the same outputs
    and the same parameter gradients."""
    from ehrfm.models import mamba2, mamba3

    used: list[int] = []

    def spy(fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            used.append(kwargs["chunk_size"] if "chunk_size" in kwargs else args[5])
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(mamba2.ops, "ssd_chunk_scan", spy(mamba2.ops.ssd_chunk_scan))
    monkeypatch.setattr(mamba3, "mamba3_scan", spy(mamba3.mamba3_scan))
    s = _streams(length=29)
    grads, outs = [], []
    for cpu_chunk in (4, 32):
        torch.manual_seed(0)
        cfg = ModelConfig(vocab_size=V, backbone=backbone, d_model=32, n_layers=2, d_state=8, headdim=16,
                          chunk_size=8, cpu_chunk_size=cpu_chunk, mimo_rank=mimo_rank, max_len=64)
        assert cfg.scan_chunk(cuda=False) == cpu_chunk
        assert cfg.scan_chunk(cuda=True) == 8
        model = EHRFoundationModel(cfg)
        logits = model(**s).logits
        assert logits is not None
        logits.sum().backward()
        assert used and set(used) == {cfg.scan_chunk(cuda=False)}
        used.clear()
        outs.append(logits.detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
