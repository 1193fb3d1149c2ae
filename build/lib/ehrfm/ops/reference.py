"""Reference twins: plain PyTorch loops over time, the definition of correct for every fast path.

Semantics follow mamba-ssm (``selective_scan_ref``, ``selective_state_update_ref`` and the SSD
recurrence behind ``mamba_chunk_scan_combined``): compute in fp32 (fp64 stays fp64), output in the
input dtype, ``out = (y + D * u) * silu(z)``. Slow by design; use them in tests and small checks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ehrfm.ops._checks import check_selective_scan, check_ssd, compute_dtype, process_delta


def expand_groups(t: torch.Tensor, channels: int, axis: int) -> torch.Tensor:
    """Repeat each group of a grouped B/C along ``axis`` so that group ``g`` serves channels
    ``g*H .. (g+1)*H-1`` (``H = channels // groups``, mamba-ssm's ``(G H)`` layout)."""
    return t.repeat_interleave(channels // t.shape[axis], dim=axis)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan, one step at a time.

    u, delta: (batch, dim, L); A: (dim, dstate); B, C: (batch, dstate, L) or (batch, groups, dstate, L);
    D, delta_bias: (dim,); z: (batch, dim, L). State recurrence per (batch, dim, dstate):
    ``h_t = exp(delta_t * A) * h_{t-1} + delta_t * u_t * B_t``, ``y_t = sum_n h_t * C_t``.
    Returns out (batch, dim, L) in u's dtype [, last_state (batch, dim, dstate) in the compute dtype].
    """
    check_selective_scan(u, delta, A, B, C, D, z, delta_bias)
    ct = compute_dtype(u.dtype)
    dim = u.shape[1]
    uf, Af = u.to(ct), A.to(ct)
    bias = None if delta_bias is None else delta_bias.to(ct)[:, None]
    dl = process_delta(delta.to(ct), bias, delta_softplus)
    # (batch, dim, dstate, L) views of B and C, groups repeated over their channels
    Bf = B.to(ct).unsqueeze(1) if B.dim() == 3 else expand_groups(B.to(ct), dim, 1)
    Cf = C.to(ct).unsqueeze(1) if C.dim() == 3 else expand_groups(C.to(ct), dim, 1)
    h = uf.new_zeros(u.shape[0], dim, A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        d_t = dl[:, :, t, None]
        h = torch.exp(d_t * Af) * h + d_t * uf[:, :, t, None] * Bf[..., t]
        ys.append((h * Cf[..., t]).sum(-1))
    y = torch.stack(ys, dim=2) if ys else uf.new_zeros(u.shape)
    out = y if D is None else y + uf * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(u.dtype)
    return (out, h) if return_last_state else out


def selective_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One Mamba-1 recurrent step (generation); ``state`` (batch, dim, dstate) is updated in place.

    x, dt, z: (batch, dim); A: (dim, dstate); B, C: (batch, dstate) or (batch, groups, dstate);
    D, dt_bias: (dim,). Returns out (batch, dim) in x's dtype; same math as one scan step.
    """
    b, dim, n = state.shape
    for name, t in (("x", x), ("dt", dt)):
        if tuple(t.shape) != (b, dim):
            raise ValueError(
                f"selective_state_update: {name} must be (batch, dim)={(b, dim)}, got {tuple(t.shape)}"
            )
    ct = compute_dtype(state.dtype)
    dl = process_delta(dt.to(ct), None if dt_bias is None else dt_bias.to(ct), dt_softplus)
    Bf = B.to(ct).unsqueeze(1) if B.dim() == 2 else expand_groups(B.to(ct), dim, 1)
    Cf = C.to(ct).unsqueeze(1) if C.dim() == 2 else expand_groups(C.to(ct), dim, 1)
    xf = x.to(ct)
    new = torch.exp(dl[..., None] * A.to(ct)) * state.to(ct) + (dl * xf)[..., None] * Bf
    state.copy_(new)
    out = (new * Cf).sum(-1)
    if D is not None:
        out = out + xf * D.to(ct)
    if z is not None:
        out = out * F.silu(z.to(ct))
    return out.to(x.dtype)


def ssd_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = 64,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    dt_softplus: bool = False,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSD as a loop over time (``chunk_size`` is accepted for signature parity and ignored).

    x: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n); D: (h,) or (h, p); z: (b, l, h, p);
    dt_bias: (h,); initial_states: (b, h, p, n). Per head (scalar decay):
    ``S_t = exp(dt_t * A) * S_{t-1} + dt_t * x_t B_t^T``, ``y_t = S_t C_t + D x_t``, then ``* silu(z)``.
    Returns y (b, l, h, p) in x's dtype [, final_states (b, h, p, n) in the compute dtype].
    """
    del chunk_size
    check_ssd(x, dt, A, B, C, D, z, dt_bias, initial_states)
    ct = compute_dtype(x.dtype)
    b, length, h, p = x.shape
    n = B.shape[-1]
    xf = x.to(ct)
    dl = process_delta(dt.to(ct), None if dt_bias is None else dt_bias.to(ct), dt_softplus)
    Bf, Cf = expand_groups(B.to(ct), h, 2), expand_groups(C.to(ct), h, 2)  # (b, l, h, n)
    s = xf.new_zeros(b, h, p, n) if initial_states is None else initial_states.to(ct)
    Af = A.to(ct)
    ys = []
    for t in range(length):
        d_t = dl[:, t, :, None, None]
        s = torch.exp(d_t * Af[:, None, None]) * s + d_t * xf[:, t, :, :, None] * Bf[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", s, Cf[:, t]))
    y = torch.stack(ys, dim=1) if ys else xf.new_zeros(x.shape)
    if D is not None:
        Df = D.to(ct)
        y = y + xf * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.to(ct))
    y = y.to(x.dtype)
    return (y, s) if return_final_states else y


def ssd_state_update_ref(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = False,
) -> torch.Tensor:
    """One Mamba-2 recurrent step; ``state`` (b, h, p, n) is updated in place.

    x, z: (b, h, p); dt: (b, h); A: (h,); B, C: (b, g, n); D: (h,) or (h, p); dt_bias: (h,).
    Returns y (b, h, p) in x's dtype.
    """
    b, h, p, n = state.shape
    if tuple(x.shape) != (b, h, p):
        raise ValueError(
            f"ssd_state_update: x must be (batch, heads, headdim)={(b, h, p)}, got {tuple(x.shape)}"
        )
    if tuple(dt.shape) != (b, h):
        raise ValueError(f"ssd_state_update: dt must be (batch, heads)={(b, h)}, got {tuple(dt.shape)}")
    ct = compute_dtype(state.dtype)
    dl = process_delta(dt.to(ct), None if dt_bias is None else dt_bias.to(ct), dt_softplus)
    Bf, Cf = expand_groups(B.to(ct), h, 1), expand_groups(C.to(ct), h, 1)  # (b, h, n)
    xf = x.to(ct)
    d_t = dl[:, :, None, None]
    new = torch.exp(d_t * A.to(ct)[:, None, None]) * state.to(ct) + d_t * xf[..., None] * Bf[:, :, None, :]
    state.copy_(new)
    y = torch.einsum("bhpn,bhn->bhp", new, Cf)
    if D is not None:
        Df = D.to(ct)
        y = y + xf * (Df[:, None] if Df.dim() == 1 else Df)
    if z is not None:
        y = y * F.silu(z.to(ct))
    return y.to(x.dtype)
