"""Mamba-1 selective scan, fast on a CPU: a two-level chunked scan with a hand-written backward.

Why this shape: Mamba-1's decay ``exp(delta_t * A)`` is per (channel, state), so the SSD trick of turning
a chunk into matrix products does not apply (the state index sits inside the exponential), and
materialising (batch, dim, L, dstate) tensors costs GBs at long L. Instead the sequence is cut into
chunks of ``chunk_size`` steps. Per chunk, the decays and inputs for all steps are computed in one
vectorised op in a time-major (T, batch, groups, dim/groups, dstate) buffer that stays cache-sized,
then the recurrence runs as one fused ``addcmul_`` per step on a contiguous (batch, dim, dstate)
slice, and the readout ``y_t = H_t C_t`` is one batched matmul. Only the chunk-boundary states are
saved; the backward recomputes a chunk's states from its boundary (as mamba-ssm's CUDA kernel does)
and runs the adjoint recurrence ``G_t = dy_t C_t + exp(delta_{t+1} A) G_{t+1}`` the same way.
Memory: O(chunk * batch * dim * dstate + L / chunk * batch * dim * dstate)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ehrfm.ops._checks import check_selective_scan, compute_dtype, process_delta

DEFAULT_CHUNK = 32  # measured best for fwd+bwd on this CPU (16..128 tried; bench/scan.py --chunk)


def _time_major(u: torch.Tensor, g: int) -> torch.Tensor:
    """(b, d, L) -> contiguous (L, b, g, d/g)."""
    b, d, length = u.shape
    return u.permute(2, 0, 1).reshape(length, b, g, d // g).contiguous()


def _chunk_forward(
    dl: torch.Tensor, du: torch.Tensor, A: torch.Tensor, Bc: torch.Tensor, h0: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """States of one chunk. dl, du: (T, b, g, hg) = delta and delta*u; A: (g, n, hg); Bc: (T, b, g, n);
    h0: (b, g, n, hg) state before the chunk. Returns (decays, states), both (T, b, g, n, hg).

    The channel axis is innermost on purpose: the broadcasts and the exp then run over contiguous
    runs of dim/groups values (vectorised), and every reduction over dstate is a sum of rows."""
    decay = (dl.unsqueeze(3) * A).exp_()
    states = du.unsqueeze(3) * Bc.unsqueeze(-1)
    states[0].addcmul_(decay[0], h0)
    for t in range(1, states.shape[0]):
        states[t].addcmul_(decay[t], states[t - 1])  # h_t = dBu_t + exp(delta_t A) h_{t-1}
    return decay, states


class _ChunkedScan(torch.autograd.Function):
    """y = scan(delta, u, A, B, C) in time-major grouped layout; also returns the last state.

    Inputs: dl, u (L, b, g, hg); A (g, n, hg); B, C (L, b, g, n). Outputs: y (L, b, g, hg),
    last state (b, g, n, hg)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        dl: torch.Tensor,
        u: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        length, b, g, hg = dl.shape
        n = A.shape[1]
        du = dl * u
        y = dl.new_empty(length, b, g, hg)
        h = dl.new_zeros(b, g, n, hg)
        starts = list(range(0, length, chunk))
        boundary = dl.new_empty(len(starts), b, g, n, hg)  # state entering each chunk
        for i, s in enumerate(starts):
            e = min(s + chunk, length)
            boundary[i] = h
            _, states = _chunk_forward(dl[s:e], du[s:e], A, B[s:e], h)
            y[s:e] = (states * C[s:e].unsqueeze(-1)).sum(3)  # y_t = sum_n h_t C_t
            h = states[-1].clone()
        ctx.save_for_backward(dl, u, A, B, C, boundary)
        ctx.chunk = chunk
        return y, h

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, dlast: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        dl, u, A, B, C, boundary = ctx.saved_tensors
        chunk = ctx.chunk
        length = dl.shape[0]
        dy = dy.contiguous()
        du_in = dl * u
        d_dl, d_u = torch.empty_like(dl), torch.empty_like(u)
        d_B, d_C = torch.empty_like(B), torch.empty_like(C)
        d_A = torch.zeros_like(A)
        carry = dlast.contiguous() if dlast is not None else torch.zeros_like(boundary[0])
        starts = list(range(0, length, chunk))
        for i in reversed(range(len(starts))):
            s = starts[i]
            e = min(s + chunk, length)
            h0 = boundary[i]
            dl_c, u_c, du_c, B_c, dy_c = dl[s:e], u[s:e], du_in[s:e], B[s:e], dy[s:e]
            decay, states = _chunk_forward(dl_c, du_c, A, B_c, h0)
            # adjoint state G_t = dL/dh_t = dy_t C_t + exp(delta_{t+1} A) G_{t+1}, backwards in time
            G = dy_c.unsqueeze(3) * C[s:e].unsqueeze(-1)
            G[-1].add_(carry)
            for t in range(G.shape[0] - 2, -1, -1):
                G[t].addcmul_(decay[t + 1], G[t + 1])
            d_C[s:e] = (states * dy_c.unsqueeze(3)).sum(-1)
            d_du = (G * B_c.unsqueeze(-1)).sum(3)  # dL/d(delta * u)
            d_B[s:e] = (G * du_c.unsqueeze(3)).sum(-1)
            carry = decay[0] * G[0]
            # dL/d(delta A) = G_t * h_{t-1} * exp(delta_t A); h_{t-1} is h0 then states[:-1]
            dx = torch.empty_like(G)
            torch.mul(G[0], h0, out=dx[0])
            torch.mul(G[1:], states[:-1], out=dx[1:])
            dx.mul_(decay)
            d_dl[s:e] = (dx * A).sum(3) + d_du * u_c
            d_u[s:e] = d_du * dl_c
            d_A += (dx * dl_c.unsqueeze(3)).sum((0, 1))
        return d_dl, d_u, d_A, d_B, d_C, None


def selective_scan_chunked(
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
    chunk_size: int = DEFAULT_CHUNK,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan, chunked (fast on CPU, differentiable in every input).

    Same signature and semantics as :func:`ehrfm.ops.reference.selective_scan_ref`:
    u, delta: (batch, dim, L); A: (dim, dstate); B, C: (batch, dstate, L) or (batch, groups, dstate, L);
    D, delta_bias: (dim,); z: (batch, dim, L). Returns out (batch, dim, L) in u's dtype
    [, last_state (batch, dim, dstate), fp32 (fp64 for fp64 input)]. ``chunk_size`` trades Python
    overhead (smaller = more steps of tiny ops) against cache-resident buffers (larger = more memory).
    """
    check_selective_scan(u, delta, A, B, C, D, z, delta_bias)
    if chunk_size < 1:
        raise ValueError(f"selective_scan_chunked: chunk_size must be >= 1, got {chunk_size}")
    ct = compute_dtype(u.dtype)
    b, dim, length = u.shape
    n = A.shape[1]
    uf = u.to(ct)
    bias = None if delta_bias is None else delta_bias.to(ct)[:, None]
    dl = process_delta(delta.to(ct), bias, delta_softplus)
    # B and C may have different group counts; run with the finer grouping and expand the other
    g = max(B.shape[1] if B.dim() == 4 else 1, C.shape[1] if C.dim() == 4 else 1)

    def grouped(t: torch.Tensor) -> torch.Tensor:  # -> time-major (L, b, g, n)
        t4 = t.to(ct).unsqueeze(1) if t.dim() == 3 else t.to(ct)
        t4 = t4.repeat_interleave(g // t4.shape[1], dim=1)
        return t4.permute(3, 0, 1, 2).contiguous()

    Ag = A.to(ct).reshape(g, dim // g, n).transpose(1, 2)  # (g, n, dim/g): channel axis innermost
    y_t, last = _ChunkedScan.apply(
        _time_major(dl, g), _time_major(uf, g), Ag, grouped(B), grouped(C), chunk_size
    )
    y = y_t.reshape(length, b, dim).permute(1, 2, 0)
    out = y if D is None else y + uf * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(u.dtype)
    return (out, last.transpose(2, 3).reshape(b, dim, n)) if return_last_state else out
