"""Small shared layers: RMSNorm, gated RMSNorm (Mamba-2), rotary embeddings (transformer)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dim (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        """x (..., dim) -> (..., dim); computed in fp32 for bf16 stability."""
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.float()).to(x.dtype)


class GatedRMSNorm(RMSNorm):
    """Mamba-2's output norm: ``RMSNorm(y * silu(z))``, normalised per group of ``group_size`` channels."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__(dim, eps)
        self.group_size = group_size

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """x, z (..., dim) -> (..., dim)."""
        xf = x.float()
        if z is not None:
            xf = xf * F.silu(z.float())
        shape = xf.shape
        g = xf.reshape(*shape[:-1], shape[-1] // self.group_size, self.group_size)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return (g.reshape(shape) * self.weight.float()).to(x.dtype)


class Rotary(nn.Module):
    """Rotary position embedding (RoPE) tables for ``max_len`` positions; half-split rotation."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        t = torch.arange(max_len, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (max_len, head_dim/2)
        self.cos: Tensor
        self.sin: Tensor
        self.register_buffer("cos", freqs.cos(), persistent=False)
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate x (b, h, l, hd) at integer ``positions`` (l,) -> (b, h, l, hd)."""
        if int(positions.max()) >= self.cos.shape[0]:
            raise ValueError(f"sequence position {int(positions.max())} >= ModelConfig.max_len="
                             f"{self.cos.shape[0]}")
        cos = self.cos[positions].to(x.dtype)  # (l, hd/2)
        sin = self.sin[positions].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
