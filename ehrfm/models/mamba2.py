"""Mamba-2 mixer (Dao & Gu, 2024) over :mod:`ehrfm.ops` SSD kernels.

in_proj -> (z, xBC, dt); causal depthwise conv + SiLU on xBC; split x (heads x headdim) and grouped B, C;
chunked SSD scan with a per-head scalar A, D skip and softplus(dt + dt_bias); gated RMSNorm with z;
out_proj. Recurrent step keeps the conv window and a (b, heads, headdim, d_state) SSM state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from ehrfm import ops
from ehrfm.models.config import ModelConfig
from ehrfm.models.layers import GatedRMSNorm


@dataclass
class Mamba2State:
    """Per-layer recurrent state: conv window (b, conv_dim, d_conv), SSM state (b, h, headdim, d_state)."""

    conv: Tensor
    ssm: Tensor


class Mamba2Mixer(nn.Module):
    """One Mamba-2 token mixer: (b, l, d_model) -> (b, l, d_model)."""

    def __init__(self, cfg: ModelConfig, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        super().__init__()
        self.cfg = cfg
        d_inner, n, g, h = cfg.d_inner, cfg.d_state, cfg.ngroups, cfg.n_ssm_heads
        self.conv_dim = d_inner + 2 * g * n
        self.in_proj = nn.Linear(cfg.d_model, d_inner + self.conv_dim + h, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv, groups=self.conv_dim)
        dt = torch.exp(torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.A_log = nn.Parameter(torch.log(torch.empty(h).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(h))
        for p in (self.dt_bias, self.A_log, self.D):
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self.norm = GatedRMSNorm(d_inner, group_size=d_inner // g, eps=cfg.norm_eps)
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)

    def _split(self, zxbcdt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        d_inner = self.cfg.d_inner
        xbc = zxbcdt[..., d_inner : d_inner + self.conv_dim]
        return zxbcdt[..., :d_inner], xbc, zxbcdt[..., -self.cfg.n_ssm_heads :]

    def _split_xbc(self, xbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        cfg = self.cfg
        gn = cfg.ngroups * cfg.d_state
        x, b_ = xbc[..., : cfg.d_inner], xbc[..., cfg.d_inner : cfg.d_inner + gn]
        c_ = xbc[..., cfg.d_inner + gn :]
        lead = x.shape[:-1]
        return (
            x.reshape(*lead, cfg.n_ssm_heads, cfg.headdim),
            b_.reshape(*lead, cfg.ngroups, cfg.d_state),
            c_.reshape(*lead, cfg.ngroups, cfg.d_state),
        )

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model)."""
        bsz, length, _ = hidden.shape
        z, xbc, dt = self._split(self.in_proj(hidden))
        xbc = ops.causal_conv1d(
            xbc.transpose(1, 2), self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu"
        ).transpose(1, 2)
        x, b_, c_ = self._split_xbc(xbc)  # (b, l, h, p), (b, l, g, n), (b, l, g, n)
        a = -torch.exp(self.A_log.float())
        y = ops.ssd_chunk_scan(
            x, dt, a, b_, c_, self.cfg.scan_chunk(x.is_cuda), D=self.D.float(), dt_bias=self.dt_bias.float(),
            dt_softplus=True,
        )
        assert isinstance(y, Tensor)
        y = self.norm(y.reshape(bsz, length, self.cfg.d_inner), z)
        return cast(Tensor, self.out_proj(y.to(hidden.dtype)))

    def allocate_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> Mamba2State:
        """Zero state for ``batch`` sequences."""
        cfg = self.cfg
        return Mamba2State(
            conv=torch.zeros(batch, self.conv_dim, cfg.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(batch, cfg.n_ssm_heads, cfg.headdim, cfg.d_state, device=device,
                            dtype=torch.float32),
        )

    def step(self, hidden: Tensor, state: Mamba2State) -> Tensor:
        """One token: hidden (b, d_model) -> (b, d_model); ``state`` is updated in place."""
        z, xbc, dt = self._split(self.in_proj(hidden))
        xbc = ops.causal_conv1d_update(xbc, state.conv, self.conv1d.weight.squeeze(1), self.conv1d.bias,
                                       "silu")
        x, b_, c_ = self._split_xbc(xbc)  # (b, h, p), (b, g, n), (b, g, n)
        a = -torch.exp(self.A_log.float())
        y = ops.ssd_state_update(
            state.ssm, x, dt, a, b_, c_, D=self.D.float(), dt_bias=self.dt_bias.float(), dt_softplus=True
        )
        y = self.norm(y.reshape(hidden.shape[0], self.cfg.d_inner), z)
        return cast(Tensor, self.out_proj(y.to(hidden.dtype)))
