"""Transformer pieces for the shared pre-norm stack: causal RoPE self-attention through
``F.scaled_dot_product_attention`` with a preallocated KV cache for token-by-token decoding, and a GELU
MLP."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrfm.models.config import ModelConfig
from ehrfm.models.layers import Rotary


@dataclass
class KVCache:
    """Per-layer keys/values (b, heads, max_len, head_dim) and the number of positions filled."""

    k: Tensor
    v: Tensor
    length: int = 0


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with rotary positions: (b, l, d) -> (b, l, d)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.out_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rotary = Rotary(self.head_dim, cfg.max_len)
        self.dropout = cfg.dropout

    def _qkv(self, x: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, length, _ = x.shape
        q, k, v = self.qkv(x).view(b, length, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return self.rotary(q, positions), self.rotary(k, positions), v  # (b, h, l, hd) each

    def forward(self, x: Tensor) -> Tensor:
        """x (b, l, d) -> (b, l, d). Right padding needs no mask: causal attention never looks right."""
        b, length, d = x.shape
        q, k, v = self._qkv(x, torch.arange(length, device=x.device))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        return cast(Tensor, self.out_proj(y.transpose(1, 2).reshape(b, length, d)))

    def allocate_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> KVCache:
        """Empty cache for ``batch`` sequences of up to ``max_len`` tokens."""
        shape = (batch, self.n_heads, self.cfg.max_len, self.head_dim)
        return KVCache(torch.zeros(shape, device=device, dtype=dtype),
                       torch.zeros(shape, device=device, dtype=dtype))

    def step(self, x: Tensor, cache: KVCache) -> Tensor:
        """One token x (b, d) at position ``cache.length`` -> (b, d); appends to the cache."""
        t = cache.length
        if t >= self.cfg.max_len:
            raise ValueError(f"KV cache full: ModelConfig.max_len={self.cfg.max_len} tokens")
        q, k, v = self._qkv(x.unsqueeze(1), torch.tensor([t], device=x.device))
        cache.k[:, :, t : t + 1] = k.to(cache.k.dtype)
        cache.v[:, :, t : t + 1] = v.to(cache.v.dtype)
        cache.length = t + 1
        keys, values = cache.k[:, :, : t + 1].to(q.dtype), cache.v[:, :, : t + 1].to(q.dtype)
        y = F.scaled_dot_product_attention(q, keys, values)  # one query sees every cached key
        return cast(Tensor, self.out_proj(y.reshape(x.shape[0], -1)))


class MLP(nn.Module):
    """Position-wise feed-forward: d -> mlp_ratio*d -> d with GELU."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model)
        self.fc2 = nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x (..., d) -> (..., d)."""
        return cast(Tensor, self.dropout(self.fc2(F.gelu(self.fc1(x)))))

