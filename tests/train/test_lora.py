"""LoRA: zero-initialised adapters change nothing, only LoRA (+ head) parameters train, merge == unmerged."""

from __future__ import annotations

import pytest
import torch

from ehrfm.models import EHRFoundationModel, ModelConfig
from ehrfm.train.heads import HeadSpec, TaskHeads
from ehrfm.train.lora import LoRALinear, apply_lora, lora_parameters, merge_lora


def _model(backbone: str) -> EHRFoundationModel:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, backbone=backbone, d_model=32, n_layers=2, headdim=16, chunk_size=8,
                      cpu_chunk_size=8, max_len=32, dropout=0.0)
    return EHRFoundationModel(cfg).eval()


def _ids() -> torch.Tensor:
    return torch.randint(7, 40, (3, 12), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("backbone", ["mamba", "mamba2", "transformer"])
def test_zero_init_changes_nothing_and_merge_matches(backbone: str) -> None:
    model = _model(backbone)
    ids = _ids()
    ref = model(ids).logits
    wrapped = apply_lora(model, rank=4)
    assert wrapped and all(not n.endswith("dt_proj") for n in wrapped)
    assert torch.equal(model(ids).logits, ref)
    with torch.no_grad():  # make the adapters non-trivial
        for p in lora_parameters(model):
            p.normal_(0, 0.05)
    lora_out = model(ids).logits
    assert not torch.allclose(lora_out, ref, atol=1e-4)
    assert merge_lora(model) == len(wrapped)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(ids).logits, lora_out, atol=1e-5, rtol=1e-5)


def test_only_lora_and_head_parameters_train() -> None:
    model = _model("mamba2")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, rank=4)
    heads = TaskHeads([HeadSpec("a", "binary")], 32)
    trainable = [p for p in [*model.parameters(), *heads.parameters()] if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in [*lora_parameters(model), *heads.parameters()]}
    opt = torch.optim.AdamW(trainable, lr=1e-2)
    model.train()
    for _ in range(3):
        out = model(_ids(), return_logits=False).hidden[:, -1]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(heads("a", out),
                                                                    torch.tensor([1.0, 0.0, 1.0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    for k, v in before.items():  # base weights live under "<name>.base.weight" once wrapped
        key = k if k in after else k.replace(".weight", ".base.weight")
        assert torch.equal(after[key], v), k
    assert any(float(p.abs().sum()) > 0 for m in model.modules() if isinstance(m, LoRALinear)
               for p in [m.lora_B])


def test_rank_validation() -> None:
    with pytest.raises(ValueError, match="rank must be >= 1"):
        LoRALinear(torch.nn.Linear(4, 4), rank=0)
    with pytest.raises(ValueError, match="no nn.Linear named"):
        apply_lora(torch.nn.Sequential(torch.nn.ReLU()))
