"""Mamba-1 mixer (Gu & Dao, 2023) over :mod:`ehrfm.ops` (CUDA kernels, chunked CPU path or reference).

Full sequence: in_proj -> (x, z); causal depthwise conv + SiLU on x; x_proj -> (dt, B, C); dt_proj;
selective scan with D skip and SiLU(z) gate; out_proj. Recurrent step: the same maths for one token with
a conv window and an SSM state carried in :class:`MambaState` (O(1) per token).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from ehrfm import ops
from ehrfm.models.config import ModelConfig


@dataclass
class MambaState:
    """Per-layer recurrent state: conv window (b, d_inner, d_conv) and SSM state (b, d_inner, d_state)."""

    conv: Tensor
    ssm: Tensor


class MambaMixer(nn.Module):
    """One Mamba-1 token mixer: (b, l, d_model) -> (b, l, d_model)."""

    def __init__(self, cfg: ModelConfig, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        super().__init__()
        self.cfg = cfg
        d_inner, n, r = cfg.d_inner, cfg.d_state, cfg.resolved_dt_rank
        self.in_proj = nn.Linear(cfg.d_model, 2 * d_inner, bias=False)
        self.conv1d = nn.Conv1d(d_inner, d_inner, cfg.d_conv, groups=d_inner, padding=cfg.d_conv - 1)
        self.x_proj = nn.Linear(d_inner, r + 2 * n, bias=False)
        self.dt_proj = nn.Linear(r, d_inner, bias=True)
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)
        # Mamba's initialisation: dt log-uniform in [dt_min, dt_max] through the softplus bias,
        # A = -[1..n] per channel (S4D-real), D = 1.
        nn.init.uniform_(self.dt_proj.weight, -(r**-0.5), r**-0.5)
        dt = torch.exp(torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        a = torch.arange(1, n + 1, dtype=torch.float32).repeat(d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(d_inner))
        self.A_log._no_weight_decay = True  # type: ignore[attr-defined]
        self.D._no_weight_decay = True  # type: ignore[attr-defined]

    def _split_xdbc(self, xdbc: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r, n = self.cfg.resolved_dt_rank, self.cfg.d_state
        return xdbc[..., :r], xdbc[..., r : r + n], xdbc[..., r + n :]

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model)."""
        length = hidden.shape[1]
        xz = self.in_proj(hidden).transpose(1, 2)  # (b, 2*d_inner, l)
        x, z = xz.chunk(2, dim=1)
        x = ops.causal_conv1d(x, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        dt_r, b_, c_ = self._split_xdbc(self.x_proj(x.transpose(1, 2)))  # (b, l, r|n|n)
        dt = (dt_r @ self.dt_proj.weight.t()).transpose(1, 2)  # (b, d_inner, l); bias goes to the scan
        a = -torch.exp(self.A_log.float())
        y = ops.selective_scan(
            x, dt, a, b_.transpose(1, 2).contiguous(), c_.transpose(1, 2).contiguous(), D=self.D.float(), z=z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
        )
        assert isinstance(y, Tensor)
        assert y.shape[-1] == length
        return cast(Tensor, self.out_proj(y.transpose(1, 2).to(hidden.dtype)))

    def allocate_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> MambaState:
        """Zero state for ``batch`` sequences."""
        cfg = self.cfg
        return MambaState(
            conv=torch.zeros(batch, cfg.d_inner, cfg.d_conv, device=device, dtype=dtype),
            ssm=torch.zeros(batch, cfg.d_inner, cfg.d_state, device=device, dtype=torch.float32),
        )

    def step(self, hidden: Tensor, state: MambaState) -> Tensor:
        """One token: hidden (b, d_model) -> (b, d_model); ``state`` is updated in place."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (b, d_inner)
        x = ops.causal_conv1d_update(x, state.conv, self.conv1d.weight.squeeze(1), self.conv1d.bias, "silu")
        dt_r, b_, c_ = self._split_xdbc(self.x_proj(x))
        dt = dt_r @ self.dt_proj.weight.t()  # (b, d_inner)
        a = -torch.exp(self.A_log.float())
        y = ops.selective_state_update(
            state.ssm, x, dt, a, b_, c_, D=self.D.float(), z=z, dt_bias=self.dt_proj.bias.float(),
            dt_softplus=True,
        )
        return cast(Tensor, self.out_proj(y.to(hidden.dtype)))

