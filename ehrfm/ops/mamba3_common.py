"""Shared pieces of the Mamba-3 ops: the recurrent state, input checks, the data-dependent rotation (RoPE)
and the MIMO up/down projections. Layouts follow mamba-ssm's ``mamba3_siso_combined`` /
``mamba3_mimo`` kernels so they are drop-ins (see :mod:`ehrfm.ops.mamba3`).

Layouts (b batch, l time, r MIMO rank (1 = SISO), g B/C groups, h heads, n state size, p head width,
a rotary angles with ``2 a <= n``):

- q (= C), k (= B): (b, l, r, g, n); v (= x), z: (b, l, h, p)
- adt (= A dt, log decay <= 0), dt, trap (pre-sigmoid): (b, h, l)
- q_bias, k_bias: (h, r, n); angles (raw, pre-tanh): (b, l, h, a); D: (h,)
- mimo_v, mimo_z, mimo_o: (h, r, p) or None (= ones: rank copies summed, the SISO case when r = 1)
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from ehrfm.ops._checks import expect_shape

ROPE_PAIRINGS = ("interleaved", "halves")
TWO_PI = 2 * math.pi


class Mamba3States(NamedTuple):
    """Recurrent state of one Mamba-3 layer (what a step needs from the past), updated in place by a step.

    angle (b, h, a): cumulative rotation angle (mod 2 pi); ssm (b, h, p, n): the SSM state;
    k (b, r, h, n): the previous step's rotated, biased B; v (b, h, p): the previous step's x (before the
    MIMO up-projection). The trapezoidal rule needs the previous input, hence k and v."""

    angle: torch.Tensor
    ssm: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor


def check_mamba3(
    op: str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    adt: torch.Tensor,
    dt: torch.Tensor,
    trap: torch.Tensor,
    q_bias: torch.Tensor,
    k_bias: torch.Tensor,
    angles: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    mimo: tuple[torch.Tensor | None, ...],
    rope: str,
    states: Mamba3States | None,
    step: bool = False,
) -> None:
    """Validate Mamba-3 inputs (full-sequence layouts, or one token's when ``step``: no time axis)."""
    if v.dim() != (3 if step else 4):
        layout = "(batch, heads, headdim)" if step else "(batch, L, heads, headdim)"
        raise ValueError(f"{op}: v must be {layout}, got shape {tuple(v.shape)}")
    if step:
        b, h, p = v.shape
        length = 1
        lead: tuple[int, ...] = (b,)
    else:
        b, length, h, p = v.shape
        lead = (b, length)
        if length < 1:
            raise ValueError(f"{op}: the sequence is empty (L = 0)")
    if q.dim() != len(lead) + 3:
        raise ValueError(f"{op}: q must be (batch,{' L,' if not step else ''} rank, groups, dstate), "
                         f"got shape {tuple(q.shape)}")
    r, g, n = q.shape[-3:]
    if g < 1 or h % g != 0:
        raise ValueError(f"{op}: q/k have {g} groups, which must divide the {h} heads")
    qk_layout = "(batch, L, rank, groups, dstate)" if not step else "(batch, rank, groups, dstate)"
    expect_shape(op, "k", k, (*lead, r, g, n), qk_layout)
    time_layout = "(batch, heads, L)" if not step else "(batch, heads)"
    for name, t in (("adt", adt), ("dt", dt), ("trap", trap)):
        expect_shape(op, name, t, (b, h, length) if not step else (b, h), time_layout)
    for name, t in (("q_bias", q_bias), ("k_bias", k_bias)):
        expect_shape(op, name, t, (h, r, n), "(heads, rank, dstate)")
    a = angles.shape[-1]
    expect_shape(op, "angles", angles, (*lead, h, a), "(batch, L, heads, angles)" if not step else
            "(batch, heads, angles)")
    if a < 1 or 2 * a > n:
        raise ValueError(f"{op}: angles has {a} rotary angles; need 1 <= angles <= dstate/2 = {n // 2}")
    if rope not in ROPE_PAIRINGS:
        raise ValueError(f"{op}: rope must be one of {ROPE_PAIRINGS}, got {rope!r}")
    if rope == "halves" and n % 2:
        raise ValueError(f"{op}: rope='halves' needs an even dstate, got {n}")
    if D is not None:
        expect_shape(op, "D", D, (h,), "(heads,)")
    if z is not None:
        expect_shape(op, "z", z, tuple(v.shape), "like v")
    for name, w in zip(("mimo_v", "mimo_z", "mimo_o"), mimo, strict=True):
        if w is not None:
            expect_shape(op, name, w, (h, r, p), "(heads, rank, headdim)")
    if states is not None:
        for name, t, shape, layout in (
            ("angle", states.angle, (b, h, a), "(batch, heads, angles)"),
            ("ssm", states.ssm, (b, h, p, n), "(batch, heads, headdim, dstate)"),
            ("k", states.k, (b, r, h, n), "(batch, rank, heads, dstate)"),
            ("v", states.v, (b, h, p), "(batch, heads, headdim)"),
        ):
            expect_shape(op, f"states.{name}", t, shape, layout)


def wrap_angle(theta: torch.Tensor) -> torch.Tensor:
    """theta mod 2 pi in [0, 2 pi) (as the kernels keep it; the floor has no gradient, so neither does the
    wrap)."""
    return theta - TWO_PI * torch.floor(theta / TWO_PI)


def angle_increment(angles: torch.Tensor, dt: torch.Tensor) -> torch.Tensor:
    """Per-step rotation: ``pi * tanh(angles) * dt``; angles (..., h, a), dt (..., h) -> (..., h, a)."""
    return torch.tanh(angles) * math.pi * dt.unsqueeze(-1)


def rotate(x: torch.Tensor, theta: torch.Tensor, rope: str) -> torch.Tensor:
    """Rotate pairs of the last axis of x (..., n) by theta (..., a) (broadcast over the leading axes).

    ``interleaved`` pairs (2i, 2i+1) (mamba-ssm's SISO kernels), ``halves`` pairs (i, i + n/2) (its MIMO
    kernels), for i < a; the other entries are left as they are (partial RoPE)."""
    a, n = theta.shape[-1], x.shape[-1]
    cos, sin = torch.cos(theta), torch.sin(theta)
    if rope == "interleaved":
        x1, x2 = x[..., 0 : 2 * a : 2], x[..., 1 : 2 * a : 2]
        pairs = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
        return torch.cat([pairs, x[..., 2 * a :]], dim=-1)
    half = n // 2
    x1, x2 = x[..., :a], x[..., half : half + a]
    return torch.cat([x1 * cos - x2 * sin, x[..., a:half], x1 * sin + x2 * cos, x[..., half + a :]], dim=-1)


def expand_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., g, n) grouped q/k -> (..., h, n): group ``j`` serves heads ``j*h/g .. (j+1)*h/g - 1``."""
    return t.repeat_interleave(heads // t.shape[-2], dim=-2)


def rank_bias(bias: torch.Tensor) -> torch.Tensor:
    """(h, r, n) per-head bias -> (r, h, n), the rank-major layout of q/k."""
    return bias.transpose(0, 1)


def mimo_up(x: torch.Tensor, w: torch.Tensor | None, rank: int) -> torch.Tensor:
    """(..., h, p) -> (..., r, h, p): ``x * w[h, r, p]`` per rank (w None = copies of x)."""
    if w is None:
        return x.unsqueeze(-3).expand(*x.shape[:-2], rank, *x.shape[-2:])
    return x.unsqueeze(-3) * w.transpose(0, 1)


def mimo_down(y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """(..., r, h, p) -> (..., h, p): ``sum_r y * w[h, r, p]`` (w None = plain sum)."""
    return (y if w is None else y * w.transpose(0, 1)).sum(-3)
