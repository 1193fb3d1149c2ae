"""Mamba-1 selective scan, fast on a CPU: a two-level chunked scan with a hand-written backward.

Why this shape: Mamba-1's decay ``exp(delta_t * A)`` is per (channel, state), so the SSD trick of turning
a chunk into matrix products does not apply (the state index sits inside the exponential), and
materialising (batch, dim, L, dstate) tensors costs GBs at long L. Instead the sequence is cut into
chunks of T steps (chosen from the shape so a (T, batch, dim, dstate) buffer is ~2 MB). Per chunk, the
decays and inputs for all steps are computed in one vectorised op into reused time-major
(T, batch, groups, dim/groups, dstate) buffers, then the recurrence runs in place: one fused
``addcmul_`` per step on a contiguous (batch, dim, dstate) slice, or, when a step is small, segmented
(:mod:`ehrfm.ops.linscan`: ~2 sqrt(T) ops per chunk instead of T); the readout ``y_t = C_t H_t`` is one
batched matmul. Only the chunk-boundary states are saved; the backward recomputes a chunk's states
from its boundary (as mamba-ssm's CUDA kernel does) and runs the adjoint recurrence
``G_t = dy_t C_t + exp(delta_{t+1} A) G_{t+1}`` the same way. The loops run on one intra-op thread
when a step is small (:func:`ehrfm.ops.linscan.scan_threads`): OpenMP fork/join per tiny op was the
main cost inside the model on a shared 2-core CPU (about 20x the single-thread CPU time).
Memory: O(chunk * batch * dim * dstate + L / chunk * batch * dim * dstate)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ehrfm.ops._checks import check_selective_scan, compute_dtype, process_delta
from ehrfm.ops.linscan import auto_segment, scan_forward_, scan_reverse_, scan_threads, segment_for

# Per-chunk buffers hold chunk x batch x dim x dstate values: aim for ~2 MB (fp32) so they stay in cache,
# with at least 16 steps per chunk (fewer makes the per-chunk ops dominate) and at most 256.
CHUNK_TARGET_NUMEL = 1 << 19
MIN_CHUNK, MAX_CHUNK = 16, 256
DEFAULT_CHUNK: int | None = None  # None = by shape, see auto_chunk


def auto_chunk(step_numel: int) -> int:
    """Steps per chunk for ``step_numel`` = batch * dim * dstate values per step (a power of two)."""
    t = max(MIN_CHUNK, min(MAX_CHUNK, CHUNK_TARGET_NUMEL // max(1, step_numel)))
    return 1 << (t.bit_length() - 1)


def _time_major(u: torch.Tensor, g: int) -> torch.Tensor:
    """(b, d, L) -> contiguous (L, b, g, d/g)."""
    b, d, length = u.shape
    return u.permute(2, 0, 1).reshape(length, b, g, d // g).contiguous()


def _chunk_forward(
    dl: torch.Tensor, du: torch.Tensor, A: torch.Tensor, Bc: torch.Tensor, h0: torch.Tensor, segment: int,
    decay: torch.Tensor, states: torch.Tensor, scratch: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """States of one chunk. dl, du: (T, b, g, hg) = delta and delta*u; A: (g, n, hg); Bc: (T, b, g, n);
    h0: (b, g, n, hg) state before the chunk; segment: see :mod:`ehrfm.ops.linscan`; decay, states:
    (T, b, g, n, hg) buffers to fill; scratch: a third one, overwritten. Returns (decays, states).

    The channel axis is innermost on purpose: the broadcasts and the exp then run over contiguous
    runs of dim/groups values (vectorised), and every reduction over dstate is a sum of rows."""
    torch.mul(dl.unsqueeze(3), A, out=decay).exp_()
    torch.mul(du.unsqueeze(3), Bc.unsqueeze(-1), out=states)
    # h_t = dBu_t + exp(delta_t A) h_{t-1}
    scan_forward_(states, decay, h0, segment_for(states.shape[0], segment), scratch)
    return decay, states


def _plan(length: int, step_numel: int, chunk: int | None, segment: int | None) -> tuple[int, int]:
    """(steps per chunk, segment length) from the explicit values or the shape heuristics."""
    t = min(length, chunk or auto_chunk(step_numel))
    return t, segment or auto_segment(t, step_numel)


class _ChunkedScan(torch.autograd.Function):
    """y = scan(delta, u, A, B, C) in time-major grouped layout; also returns the last state.

    Inputs: dl, u (L, b, g, hg); A (g, n, hg); B, C (L, b, g, n). Outputs: y (L, b, g, hg),
    last state (b, g, n, hg)."""

    @staticmethod
    def forward(
        ctx: Any,
        dl: torch.Tensor,
        u: torch.Tensor,
        A: torch.Tensor,
        B: torch.Tensor,
        C: torch.Tensor,
        chunk: int,
        segment: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        length, b, g, hg = dl.shape
        n = A.shape[1]
        starts = list(range(0, length, chunk))
        boundary = dl.new_empty(len(starts), b, g, n, hg)  # state entering each chunk
        y = dl.new_empty(length, b, g, hg)
        h = dl.new_zeros(b, g, n, hg)
        with scan_threads(b * g * n * hg):
            du = dl * u
            decay_buf, states_buf, scratch = dl.new_empty(3, min(chunk, length), b, g, n, hg)
            for i, s in enumerate(starts):
                e = min(s + chunk, length)
                boundary[i] = h
                _, states = _chunk_forward(dl[s:e], du[s:e], A, B[s:e], h, segment, decay_buf[: e - s],
                                           states_buf[: e - s], scratch[: e - s])
                y[s:e] = torch.matmul(C[s:e].unsqueeze(-2), states).squeeze(-2)  # y_t = sum_n C_t h_t
                h = states[-1].clone()
        ctx.save_for_backward(dl, u, A, B, C, boundary)
        ctx.chunk, ctx.segment = chunk, segment
        return y, h

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, dlast: torch.Tensor) -> tuple[Any, ...]:
        dl, u, A, B, C, boundary = ctx.saved_tensors
        chunk, segment = ctx.chunk, ctx.segment
        length, b, g, hg = dl.shape
        n = A.shape[1]
        with scan_threads(b * g * n * hg):
            dy = dy.contiguous()
            du_in = dl * u
            d_dl, d_u = torch.empty_like(dl), torch.empty_like(u)
            d_B, d_C = torch.empty_like(B), torch.empty_like(C)
            d_A = torch.zeros_like(A)
            carry = dlast.contiguous() if dlast is not None else torch.zeros_like(boundary[0])
            bufs = dl.new_empty(4, min(chunk, length), b, g, n, hg)  # decay, states, adjoint, scratch
            starts = list(range(0, length, chunk))
            for i in reversed(range(len(starts))):
                s = starts[i]
                e = min(s + chunk, length)
                h0 = boundary[i]
                dl_c, u_c, du_c, B_c, dy_c = dl[s:e], u[s:e], du_in[s:e], B[s:e], dy[s:e]
                decay_b, states_b, G, tmp = (buf[: e - s] for buf in bufs)
                decay, states = _chunk_forward(dl_c, du_c, A, B_c, h0, segment, decay_b, states_b, tmp)
                # adjoint state G_t = dL/dh_t = dy_t C_t + exp(delta_{t+1} A) G_{t+1}, backwards in time
                torch.mul(dy_c.unsqueeze(3), C[s:e].unsqueeze(-1), out=G)
                G[-1].add_(carry)
                scan_reverse_(G, decay, segment_for(e - s, segment), tmp)
                torch.sum(torch.mul(states, dy_c.unsqueeze(3), out=tmp), -1, out=d_C[s:e])
                d_du = torch.matmul(B_c.unsqueeze(-2), G).squeeze(-2)  # dL/d(delta * u)
                torch.sum(torch.mul(G, du_c.unsqueeze(3), out=tmp), -1, out=d_B[s:e])
                carry = decay[0] * G[0]
                # dL/d(delta A) = G_t * h_{t-1} * exp(delta_t A); h_{t-1} is h0 then states[:-1]
                dx = tmp
                torch.mul(G[0], h0, out=dx[0])
                torch.mul(G[1:], states[:-1], out=dx[1:])
                dx.mul_(decay)
                scratch = states  # the states are no longer needed
                torch.sum(torch.mul(dx, A, out=scratch), 3, out=d_dl[s:e])
                d_dl[s:e].addcmul_(d_du, u_c)
                torch.mul(d_du, dl_c, out=d_u[s:e])
                d_A += torch.mul(dx, dl_c.unsqueeze(3), out=scratch).sum((0, 1))
        return d_dl, d_u, d_A, d_B, d_C, None, None


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
    chunk_size: int | None = DEFAULT_CHUNK,
    segment_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Mamba-1 selective scan, chunked (fast on CPU, differentiable in every input).

    Same signature and semantics as :func:`ehrfm.ops.reference.selective_scan_ref`:
    u, delta: (batch, dim, L); A: (dim, dstate); B, C: (batch, dstate, L) or (batch, groups, dstate, L);
    D, delta_bias: (dim,); z: (batch, dim, L). Returns out (batch, dim, L) in u's dtype
    [, last_state (batch, dim, dstate), fp32 (fp64 for fp64 input)].

    ``chunk_size`` (steps per chunk) trades per-chunk op count against buffer size (chunk x batch x dim x
    dstate values, kept cache-sized); ``segment_size`` (steps per segment inside a chunk, see
    :mod:`ehrfm.ops.linscan`) cuts the Python steps per chunk from T to about 2 sqrt(T) when a step is
    small. ``None`` picks both from the shape (:func:`auto_chunk`, :func:`~ehrfm.ops.linscan.auto_segment`).
    """
    check_selective_scan(u, delta, A, B, C, D, z, delta_bias)
    for name, value in (("chunk_size", chunk_size), ("segment_size", segment_size)):
        if value is not None and value < 1:
            raise ValueError(f"selective_scan_chunked: {name} must be >= 1 or None, got {value}")
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
    chunk, segment = _plan(max(1, length), b * dim * n, chunk_size, segment_size)
    y_t, last = _ChunkedScan.apply(  # type: ignore[no-untyped-call]
        _time_major(dl, g), _time_major(uf, g), Ag, grouped(B), grouped(C), chunk, segment
    )
    y = y_t.reshape(length, b, dim).permute(1, 2, 0)
    out = y if D is None else y + uf * D.to(ct)[:, None]
    if z is not None:
        out = out * F.silu(z.to(ct))
    out = out.to(u.dtype)
    return (out, last.transpose(2, 3).reshape(b, dim, n)) if return_last_state else out
