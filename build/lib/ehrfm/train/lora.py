"""LoRA (Hu et al., 2021) on the backbone's linear projections, in ~100 lines of our own.

Why not ``peft``: it is one more heavy dependency (and its own version pins against torch/transformers)
for what is a wrapper around ``nn.Linear``; its target discovery assumes Hugging Face module names and
its merge/unmerge/save paths assume ``PreTrainedModel``. Our mixers are custom modules, and a few of their
matrices are read directly as ``.weight`` (Mamba-1's ``dt_proj`` feeds the scan as a matrix, the conv
weights go to the conv kernel): those must NOT be wrapped, which an explicit target list makes obvious.

``W x + (alpha / r) * B A x`` with ``A`` (r, in) Kaiming-uniform and ``B`` (out, r) zero, so a freshly
wrapped model computes exactly what the base model did. :func:`merge_lora` folds ``B A`` into ``W`` and
restores plain ``nn.Linear`` modules (what gets saved: a merged model loads with no LoRA code).
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import Tensor, nn

# Linear layers called as modules inside the blocks (Mamba-1/2: in/x/out projections; transformer:
# qkv, out projection and the MLP). Mamba-1's dt_proj is read as a raw matrix: not a target.
DEFAULT_TARGETS = ("in_proj", "x_proj", "out_proj", "qkv", "fc1", "fc2")


class LoRALinear(nn.Module):
    """``base(x) + scale * lora_B(lora_A(dropout(x)))`` around a frozen ``nn.Linear``."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if rank < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {rank}")
        self.base = base
        self.rank, self.scale = rank, alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)
        for p in self.base.parameters():
            p.requires_grad_(False)

    @property
    def weight(self) -> Tensor:
        """The effective (merged) weight (out, in), for code that reads ``.weight`` directly."""
        return self.base.weight + self.scale * (self.lora_B @ self.lora_A)

    @property
    def bias(self) -> Tensor | None:
        """The base layer's bias."""
        return self.base.bias

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in) -> (..., out)."""
        delta = (self.dropout(x) @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(x.dtype)
        return cast(Tensor, self.base(x) + self.scale * delta)

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with ``B A`` folded into its weight."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight)
            if self.base.bias is not None and out.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def apply_lora(model: nn.Module, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0,
               targets: tuple[str, ...] = DEFAULT_TARGETS) -> list[str]:
    """Freeze every parameter of ``model`` and wrap its ``nn.Linear`` children named in ``targets`` with
    :class:`LoRALinear` (only the LoRA matrices train). Returns the wrapped module paths."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped: list[str] = []
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if name in targets and isinstance(child, nn.Linear):
                setattr(parent, name, LoRALinear(child, rank, alpha, dropout))
                wrapped.append(f"{parent_name}.{name}" if parent_name else name)
    if not wrapped:
        raise ValueError(f"apply_lora: no nn.Linear named {targets} in the model")
    return wrapped


def merge_lora(model: nn.Module) -> int:
    """Replace every :class:`LoRALinear` in ``model`` by its merged ``nn.Linear``; returns how many."""
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
                n += 1
    return n


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA matrices of ``model``."""
    return [p for m in model.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]
