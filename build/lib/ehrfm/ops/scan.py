"""Public dispatchers: one call, three implementations (mamba-ssm CUDA kernel, chunked, reference).

See :mod:`ehrfm.ops.dispatch` for how the path is chosen. Signatures and semantics follow mamba-ssm so
that its kernels are drop-ins: ``selective_scan_fn``, ``mamba_chunk_scan_combined`` and the Triton
``selective_state_update``."""

from __future__ import annotations

import torch

from ehrfm.ops import reference
from ehrfm.ops.dispatch import choose
from ehrfm.ops.scan_chunked import selective_scan_chunked
from ehrfm.ops.ssd import DEFAULT_CHUNK as SSD_CHUNK
from ehrfm.ops.ssd import ssd_chunked


def selective_scan(
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
    """Mamba-1 selective scan (dispatcher). u, delta: (batch, dim, L); A: (dim, dstate);
    B, C: (batch, dstate, L) or (batch, groups, dstate, L); D, delta_bias: (dim,); z: (batch, dim, L).
    Returns out (batch, dim, L) [, last_state (batch, dim, dstate)]; ``out = (y + D u) * silu(z)``."""
    path, kernel = choose("selective_scan", u, delta)
    if path == "cuda" and kernel is not None:
        out = kernel(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
        return out  # type: ignore[no-any-return]
    fn = reference.selective_scan_ref if path == "ref" else selective_scan_chunked
    return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)


def selective_state_update(
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
    """One Mamba-1 generation step (dispatcher); ``state`` (batch, dim, dstate) is updated in place.
    x, dt, z: (batch, dim); A: (dim, dstate); B, C: (batch, dstate) or (batch, groups, dstate);
    D, dt_bias: (dim,). Returns (batch, dim). The state layout is ``last_state`` of the scan."""
    path, kernel = choose("selective_state_update", state, x)
    if path == "cuda" and kernel is not None:
        if B.dim() == 2:
            return kernel(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)  # type: ignore[no-any-return]
        # Mamba-1 channel groups == the kernel's heads: view (b, dim) as (b, groups, dim / groups)
        b, dim, n = state.shape
        g = B.shape[1]

        def heads(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.reshape(*t.shape[:-1], g, dim // g) if t.dim() < 3 else t

        out = kernel(
            state.view(b, g, dim // g, n),
            heads(x),
            heads(dt),
            A.view(g, dim // g, n),
            B,
            C,
            heads(D),
            heads(z),
            heads(dt_bias),
            dt_softplus,
        )
        return out.reshape(b, dim)  # type: ignore[no-any-return]
    # one step has no time loop to chunk: the reference step is the torch implementation
    return reference.selective_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)


def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int = SSD_CHUNK,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    initial_states: torch.Tensor | None = None,
    dt_softplus: bool = False,
    return_final_states: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-2 SSD scan (dispatcher, mamba-ssm ``mamba_chunk_scan_combined`` semantics).
    x: (b, l, h, p); dt: (b, l, h); A: (h,); B, C: (b, l, g, n); D: (h,) or (h, p); z: (b, l, h, p);
    dt_bias: (h,); initial_states: (b, h, p, n). Returns y (b, l, h, p) [, final_states (b, h, p, n)]."""
    path, kernel = choose("ssd_chunk_scan", x, dt)
    if path == "cuda" and kernel is not None:
        return kernel(  # type: ignore[no-any-return]
            x,
            dt,
            A,
            B,
            C,
            chunk_size,
            D=D,
            z=z,
            dt_bias=dt_bias,
            initial_states=initial_states,
            dt_softplus=dt_softplus,
            return_final_states=return_final_states,
        )
    fn = reference.ssd_ref if path == "ref" else ssd_chunked
    return fn(x, dt, A, B, C, chunk_size, D, z, dt_bias, initial_states, dt_softplus, return_final_states)


def ssd_state_update(
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
    """One Mamba-2 generation step (dispatcher); ``state`` (b, h, p, n) is updated in place.
    x, z: (b, h, p); dt: (b, h); A: (h,); B, C: (b, g, n); D: (h,) or (h, p); dt_bias: (h,).
    Returns y (b, h, p). The state layout is ``final_states`` of :func:`ssd_chunk_scan`."""
    path, kernel = choose("ssd_state_update", state, x)
    if path == "cuda" and kernel is not None:
        # the Triton kernel takes per-(head, headdim) parameters: broadcast views, as mamba-ssm's Mamba2.step
        b, h, p, n = state.shape
        A_k = A[:, None, None].expand(h, p, n).to(torch.float32)
        dt_k = dt[:, :, None].expand(b, h, p)
        bias_k = None if dt_bias is None else dt_bias[:, None].expand(h, p)
        D_k = None if D is None else (D[:, None].expand(h, p) if D.dim() == 1 else D)
        return kernel(state, x, dt_k, A_k, B, C, D_k, z, bias_k, dt_softplus)  # type: ignore[no-any-return]
    return reference.ssd_state_update_ref(state, x, dt, A, B, C, D, z, dt_bias, dt_softplus)
