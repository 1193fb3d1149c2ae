"""Mamba-3 mixer (Lahoti et al., 2026; ``Mamba3`` of mamba-ssm >= 2.3) over :mod:`ehrfm.ops.mamba3`.

in_proj -> (z, x, B, C, dt, A, trap, angles), in mamba-ssm's order so that its weights load unchanged;
no short convolution (the trapezoidal rule's two-point input plays its part). Per head and step:
``dt = softplus(dt + dt_bias)``, a data-dependent ``A = -max(heavy_tail(A), A_floor)``, ``trap = sigmoid``
mixing of the trapezoid's ends; B and C are RMS-normed over the state, get a learned per-head (and per-rank)
bias initialised to 1 and are rotated by cumulative data-dependent angles (the complex-valued state as
RoPE). SISO (``mimo_rank`` 1) or MIMO: x and z are up-projected to r ranks per head and the r outputs
projected back (``mimo_x``, ``mimo_z``, ``mimo_o``). Output ``(y + D x) * silu(z)`` -> out_proj.

Choices where mamba-ssm offers options (it is the reference): rotary pairs interleaved for SISO and split
in halves for MIMO, as its kernels do (so weights are interchangeable); the optional output RMSNorm
(``is_outproj_norm``, off by default there) is not built; the MIMO chunk on CUDA is ``chunk_size /
mimo_rank`` (at least 8), mamba-ssm's recommendation (``ModelConfig.scan_chunk``). The recurrent step
keeps angle, SSM state and the previous token's (B, x) in :class:`Mamba3State`: O(1) per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrfm.config.model import ModelConfig
from ehrfm.models.layers import RMSNorm
from ehrfm.ops.mamba3 import mamba3_scan, mamba3_state_update
from ehrfm.ops.mamba3_common import Mamba3States


@dataclass
class Mamba3State:
    """Per-layer recurrent state (a dataclass of tensors, as the other mixers', which generation code copies
    and freezes field by field): angle (b, h, a), ssm (b, h, headdim, d_state), k (b, rank, h, d_state) and
    v (b, h, headdim), the previous token's B and x (see :class:`~ehrfm.ops.mamba3_common.Mamba3States`)."""

    angle: Tensor
    ssm: Tensor
    k: Tensor
    v: Tensor

    def ops(self) -> Mamba3States:
        """The same tensors (not copies) in the ops' layout, for in-place updates."""
        return Mamba3States(self.angle, self.ssm, self.k, self.v)


def heavy_tail(x: Tensor) -> Tensor:
    """mamba-ssm's activation of the data-dependent A: ``1 + x`` for x >= 0, ``1 / (1 - x)`` below; positive,
    continuous, differentiable at 0."""
    return x.clamp_min(0) + torch.reciprocal(1 - x.clamp_max(0))


class Mamba3Mixer(nn.Module):
    """One Mamba-3 token mixer: (b, l, d_model) -> (b, l, d_model)."""

    def __init__(self, cfg: ModelConfig, dt_min: float = 1e-3, dt_max: float = 0.1,
                 dt_init_floor: float = 1e-4, a_floor: float = 1e-4) -> None:
        super().__init__()
        self.cfg = cfg
        d_inner, n, g, h, p, r = (cfg.d_inner, cfg.d_state, cfg.ngroups, cfg.n_ssm_heads, cfg.headdim,
                                  cfg.mimo_rank)
        self.a_floor = a_floor
        self.rope = "interleaved" if r == 1 else "halves"
        # order of the projection: [z, x, B, C, dt, A, trap, angles]
        self.sizes = [d_inner, d_inner, r * g * n, r * g * n, h, h, h, cfg.n_rope_angles]
        self.in_proj = nn.Linear(cfg.d_model, sum(self.sizes), bias=False)
        dt = torch.exp(torch.rand(h) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp_min(dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        self.B_bias = nn.Parameter(torch.ones(h, r, n))
        self.C_bias = nn.Parameter(torch.ones(h, r, n))
        self.B_norm = RMSNorm(n, eps=1e-5)
        self.C_norm = RMSNorm(n, eps=1e-5)
        self.mimo_x: nn.Parameter | None = None
        self.mimo_z: nn.Parameter | None = None
        self.mimo_o: nn.Parameter | None = None
        if r > 1:
            self.mimo_x = nn.Parameter(torch.ones(h, r, p) / r)
            self.mimo_z = nn.Parameter(torch.ones(h, r, p))
            self.mimo_o = nn.Parameter(torch.ones(h, r, p) / r)
        self.D = nn.Parameter(torch.ones(h))
        for param in (self.dt_bias, self.D):
            param._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_proj = nn.Linear(d_inner, cfg.d_model, bias=False)

    def _inputs(self, hidden: Tensor) -> dict[str, Tensor | None]:
        """Project hidden (..., d_model) (lead (b, l) or (b,)) to the op's inputs, in the op's layouts."""
        cfg = self.cfg
        lead = hidden.shape[:-1]
        z, x, B, C, dd_dt, dd_a, trap, angles = torch.split(self.in_proj(hidden), self.sizes, dim=-1)
        h, p = cfg.n_ssm_heads, cfg.headdim
        a = torch.clamp(-heavy_tail(dd_a.float()), max=-self.a_floor)
        dt = F.softplus(dd_dt.float() + self.dt_bias.float())

        def heads_last(t: Tensor) -> Tensor:  # (..., h) -> (b, h, l) for the scan, (b, h) for a step
            return t.transpose(1, 2) if t.dim() == 3 else t

        bc_shape = (*lead, cfg.mimo_rank, cfg.ngroups, cfg.d_state)
        return {
            "q": self.C_norm(C.reshape(bc_shape)), "k": self.B_norm(B.reshape(bc_shape)),
            "v": x.reshape(*lead, h, p), "z": z.reshape(*lead, h, p),
            "adt": heads_last(a * dt), "dt": heads_last(dt), "trap": heads_last(trap),
            "angles": angles.float().unsqueeze(-2).expand(*lead, h, cfg.n_rope_angles),
            "q_bias": self.C_bias, "k_bias": self.B_bias, "D": self.D,
            "mimo_v": self.mimo_x, "mimo_z": self.mimo_z, "mimo_o": self.mimo_o,
        }

    def forward(self, hidden: Tensor) -> Tensor:
        """hidden (b, l, d_model) -> (b, l, d_model)."""
        bsz, length, _ = hidden.shape
        chunk = self.cfg.scan_chunk(hidden.is_cuda)
        y = mamba3_scan(**self._inputs(hidden), rope=self.rope, chunk_size=chunk)  # type: ignore[arg-type]
        assert isinstance(y, Tensor)
        return cast(Tensor, self.out_proj(y.reshape(bsz, length, self.cfg.d_inner).to(hidden.dtype)))

    def allocate_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> Mamba3State:
        """Zero state for ``batch`` sequences (fp32 whatever ``dtype``, as mamba-ssm keeps its SSM state)."""
        del dtype
        cfg = self.cfg
        h, r, p, n = cfg.n_ssm_heads, cfg.mimo_rank, cfg.headdim, cfg.d_state

        def zeros(*shape: int) -> Tensor:
            return torch.zeros(*shape, device=device, dtype=torch.float32)

        return Mamba3State(angle=zeros(batch, h, cfg.n_rope_angles), ssm=zeros(batch, h, p, n),
                           k=zeros(batch, r, h, n), v=zeros(batch, h, p))

    def step(self, hidden: Tensor, state: Mamba3State) -> Tensor:
        """One token: hidden (b, d_model) -> (b, d_model); ``state`` is updated in place."""
        y = mamba3_state_update(state.ops(), rope=self.rope, **self._inputs(hidden))  # type: ignore[arg-type]
        return cast(Tensor, self.out_proj(y.reshape(hidden.shape[0], self.cfg.d_inner).to(hidden.dtype)))
