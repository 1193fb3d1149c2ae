"""Random inputs and comparison helpers for the ops tests (shared by the CPU and GPU tests)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 for empty tensors)."""
    if b.numel() == 0:
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def scan_inputs(
    b: int,
    d: int,
    n: int,
    length: int,
    groups: tuple[int | None, int | None] = (None, None),
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    opts: tuple[bool, bool, bool] = (True, True, True),
) -> dict[str, torch.Tensor | None]:
    """Mamba-1 inputs (leaf tensors requiring grad). groups: (B groups, C groups), None = ungrouped;
    opts: whether D, z, delta_bias are given. A is negative (S4D-real style, decays < 1)."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype).requires_grad_()

    def bc(g: int | None) -> torch.Tensor:
        return rnd(b, n, length) if g is None else rnd(b, g, n, length)

    A = (-torch.rand(d, n, generator=gen) * 3 - 0.1).to(device=device, dtype=dtype).requires_grad_()
    with_d, with_z, with_bias = opts
    return {
        "u": rnd(b, d, length),
        "delta": rnd(b, d, length, scale=0.5),
        "A": A,
        "B": bc(groups[0]),
        "C": bc(groups[1]),
        "D": rnd(d) if with_d else None,
        "z": rnd(b, d, length) if with_z else None,
        "delta_bias": rnd(d, scale=0.5) if with_bias else None,
    }


def ssd_inputs(
    b: int,
    length: int,
    h: int,
    p: int,
    g: int,
    n: int,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    seed: int = 0,
    d_per_dim: bool = False,
    opts: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> dict[str, torch.Tensor | None]:
    """Mamba-2 inputs (leaf tensors requiring grad); opts: D, z, dt_bias, initial_states given."""
    gen = torch.Generator().manual_seed(seed)

    def rnd(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype).requires_grad_()

    with_d, with_z, with_bias, with_init = opts
    A = (-torch.rand(h, generator=gen) * 2 - 0.1).to(device=device, dtype=dtype).requires_grad_()
    return {
        "x": rnd(b, length, h, p),
        "dt": rnd(b, length, h, scale=0.5),
        "A": A,
        "B": rnd(b, length, g, n),
        "C": rnd(b, length, g, n),
        "D": (rnd(h, p) if d_per_dim else rnd(h)) if with_d else None,
        "z": rnd(b, length, h, p) if with_z else None,
        "dt_bias": rnd(h, scale=0.5) if with_bias else None,
        "initial_states": rnd(b, h, p, n) if with_init else None,
    }


def grads(
    outs: Sequence[torch.Tensor], inputs: dict[str, torch.Tensor | None], seed: int = 1
) -> dict[str, torch.Tensor]:
    """Gradients of a fixed random projection of the outputs w.r.t. every non-None input."""
    gen = torch.Generator().manual_seed(seed)
    loss = sum(
        (o.float() * torch.randn(o.shape, generator=gen).to(device=o.device, dtype=torch.float32)).sum()
        for o in outs
    )
    names = [k for k, v in inputs.items() if v is not None]
    gs = torch.autograd.grad(loss, [inputs[k] for k in names])  # type: ignore[arg-type,misc]
    return dict(zip(names, gs, strict=True))
