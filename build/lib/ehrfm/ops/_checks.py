"""Shape checks and input preparation shared by the scan implementations.

Every public op validates its inputs here so that a wrong shape fails with a message naming the
argument and the expected layout instead of an einsum/broadcast error deep inside a loop."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for half/bf16/fp32 inputs (mamba-ssm computes the scan in fp32); fp64 stays fp64."""
    return torch.promote_types(dtype, torch.float32)


def expect_shape(op: str, name: str, t: torch.Tensor, shape: Sequence[int], layout: str) -> None:
    """Raise ``ValueError`` naming ``op``/``name`` unless ``t.shape == shape``."""
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} must have shape {layout} = {tuple(shape)}, got {tuple(t.shape)}")


def groups_of(op: str, name: str, t: torch.Tensor, lead: int, heads: int) -> int:
    """Number of groups of a grouped B/C tensor: ``t.shape[lead]``, which must divide ``heads``."""
    g = int(t.shape[lead])
    if g < 1 or heads % g != 0:
        raise ValueError(f"{op}: {name} has {g} groups, which must divide the {heads} channels/heads")
    return g


def process_delta(delta: torch.Tensor, bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    """``softplus(delta + bias)`` (each step optional); ``bias`` must already broadcast against delta."""
    if bias is not None:
        delta = delta + bias
    if softplus:
        delta = F.softplus(delta)
    return delta


def check_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
) -> None:
    """Validate Mamba-1 scan inputs (layouts as in mamba-ssm's ``selective_scan_fn``)."""
    op = "selective_scan"
    if u.dim() != 3:
        raise ValueError(f"{op}: u must be (batch, dim, L), got shape {tuple(u.shape)}")
    b, d, length = u.shape
    expect_shape(op, "delta", delta, (b, d, length), "(batch, dim, L)")
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"{op}: A must be (dim, dstate) with dim={d}, got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError(f"{op}: complex A is not supported (real Mamba-1 S4D parametrisation only)")
    n = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            expect_shape(op, name, t, (b, n, length), "(batch, dstate, L)")
        elif t.dim() == 4:
            g = groups_of(op, name, t, 1, d)
            expect_shape(op, name, t, (b, g, n, length), "(batch, groups, dstate, L)")
        else:
            raise ValueError(
                f"{op}: {name} must be (batch, dstate, L) or (batch, groups, dstate, L) "
                f"(time-invariant B/C are not supported), got {tuple(t.shape)}"
            )
    if D is not None:
        expect_shape(op, "D", D, (d,), "(dim,)")
    if z is not None:
        expect_shape(op, "z", z, (b, d, length), "(batch, dim, L)")
    if delta_bias is not None:
        expect_shape(op, "delta_bias", delta_bias, (d,), "(dim,)")


def check_ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    dt_bias: torch.Tensor | None,
    initial_states: torch.Tensor | None,
) -> None:
    """Validate Mamba-2 SSD inputs (layouts as in mamba-ssm's ``mamba_chunk_scan_combined``)."""
    op = "ssd_chunk_scan"
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be (batch, L, heads, headdim), got shape {tuple(x.shape)}")
    b, length, h, p = x.shape
    expect_shape(op, "dt", dt, (b, length, h), "(batch, L, heads)")
    expect_shape(op, "A", A, (h,), "(heads,)")
    if B.dim() != 4:
        raise ValueError(f"{op}: B must be (batch, L, groups, dstate), got shape {tuple(B.shape)}")
    g = groups_of(op, "B", B, 2, h)
    n = B.shape[3]
    expect_shape(op, "B", B, (b, length, g, n), "(batch, L, groups, dstate)")
    expect_shape(op, "C", C, (b, length, g, n), "(batch, L, groups, dstate)")
    if D is not None and tuple(D.shape) not in ((h,), (h, p)):
        raise ValueError(f"{op}: D must be (heads,)={h} or (heads, headdim)=({h}, {p}), got {tuple(D.shape)}")
    if z is not None:
        expect_shape(op, "z", z, (b, length, h, p), "(batch, L, heads, headdim)")
    if dt_bias is not None:
        expect_shape(op, "dt_bias", dt_bias, (h,), "(heads,)")
    if initial_states is not None:
        expect_shape(op, "initial_states", initial_states, (b, h, p, n), "(batch, heads, headdim, dstate)")
