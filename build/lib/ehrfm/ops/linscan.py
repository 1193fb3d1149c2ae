"""Diagonal linear recurrences over the leading (time) axis, in place, with few Python steps.

``scan_forward_`` computes ``x_t <- a_t * x_{t-1} + x_t`` and ``scan_reverse_`` the adjoint
``x_t <- a_{t+1} * x_{t+1} + x_t``; both are what the chunked Mamba-1 scan runs per chunk.

Why segments: a plain loop costs one PyTorch op (~5-10 us of dispatch) per time step whatever the
step's size, so at small batch x dim x dstate (e.g. one 8k-token sequence: 2k values per step) the
scan is all overhead. Splitting T steps into K segments of S steps runs the recurrence inside all
segments at once (S ops of K times the size), then K ops to carry the segment-end states across
segments, then one op adding ``prod(decays since the segment start) * incoming state`` to every step:
S + K + O(1) ops instead of T. The extra arithmetic is ~2 passes over the chunk; the result is the
same recurrence up to rounding (products of decays <= 1 neither overflow nor lose precision).

Also here: the intra-op thread policy for these loops (see :func:`scan_threads`)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator

import torch

THREADS_ENV = "EHRFM_SCAN_THREADS"
# Below this many values per step the ops of the scan loops run on one thread: an OpenMP fork/join costs
# ~10 us on idle cores and milliseconds on oversubscribed ones, more than a 32k-value op takes alone.
PARALLEL_MIN_STEP = 1 << 18


@contextlib.contextmanager
def scan_threads(step_numel: int) -> Iterator[int]:
    """Run the block with the intra-op thread count the scan loops should use; yields that count.

    One thread when a step touches fewer than ``PARALLEL_MIN_STEP`` values, else torch's setting;
    ``EHRFM_SCAN_THREADS=<n>`` forces n. The previous ``torch.get_num_threads()`` is restored after."""
    before = torch.get_num_threads()
    forced = os.environ.get(THREADS_ENV, "").strip()
    if forced:
        if not forced.isdigit() or int(forced) < 1:
            raise ValueError(f"{THREADS_ENV} must be a positive integer, got {forced!r}")
        want = int(forced)
    else:
        want = 1 if step_numel < PARALLEL_MIN_STEP else before
    if want == before:
        yield before
        return
    torch.set_num_threads(want)
    try:
        yield want
    finally:
        torch.set_num_threads(before)


def auto_segment(steps: int, step_numel: int, target_numel: int = 1 << 15) -> int:
    """Segment length for a chunk of ``steps`` steps of ``step_numel`` values each.

    ``steps`` (no segmentation) when one step already holds ``target_numel`` values; otherwise the
    divisor of ``steps`` nearest below sqrt(steps) (S + K ops is smallest at S = K = sqrt(T))."""
    if steps <= 2 or step_numel >= target_numel:
        return steps
    s = max(1, math.isqrt(steps))
    while steps % s:
        s -= 1
    return s


def segment_for(steps: int, segment: int) -> int:
    """The largest divisor of ``steps`` that is <= ``segment`` (the last chunk may be shorter)."""
    s = max(1, min(segment, steps))
    while steps % s:
        s -= 1
    return s


def scan_forward_(x: torch.Tensor, decay: torch.Tensor, h0: torch.Tensor, segment: int,
                  scratch: torch.Tensor | None = None) -> torch.Tensor:
    """In place ``x_t = decay_t * x_{t-1} + x_t`` for t = 0..T-1 with ``x_{-1} = h0``; returns x.

    x, decay: (T, *S) contiguous; h0: (*S); ``segment`` divides T (T = no segmentation); ``scratch``:
    an optional (T, *S) buffer for the decay products (allocated when None)."""
    steps = x.shape[0]
    x[0].addcmul_(decay[0], h0)
    if segment >= steps or segment <= 1:
        for t in range(1, steps):
            x[t].addcmul_(decay[t], x[t - 1])
        return x
    k = steps // segment
    xv = x.view(k, segment, *x.shape[1:])
    av = decay.view(k, segment, *x.shape[1:])
    # prod[j, s]: decay product from the start of segment j to step s (<= 1: no overflow). A loop of
    # muls, not torch.cumprod: the CPU cumprod kernel walks the scan axis with strided inner loops (~4x
    # slower than these contiguous ops).
    prod = torch.empty_like(av) if scratch is None else scratch.view_as(av)
    prod[:, 0] = av[:, 0]
    for s in range(1, segment):  # the recurrence inside every segment at once (segment 0 starts at h0)
        xv[:, s].addcmul_(av[:, s], xv[:, s - 1])
        torch.mul(av[:, s], prod[:, s - 1], out=prod[:, s])
    for j in range(1, k):  # segment-end states: carry the previous segment's full end state in
        xv[j, -1].addcmul_(prod[j, -1], xv[j - 1, -1])
    xv[1:, :-1].addcmul_(prod[1:, :-1], xv[:-1, -1:])  # and into every other step of the segment
    return x


def scan_reverse_(x: torch.Tensor, decay: torch.Tensor, segment: int,
                  scratch: torch.Tensor | None = None) -> torch.Tensor:
    """In place ``x_t = decay_{t+1} * x_{t+1} + x_t`` for t = T-2..0 (the adjoint of
    :func:`scan_forward_`; add any carry from beyond the chunk to ``x[-1]`` first); returns x.

    x, decay: (T, *S) contiguous; ``segment`` divides T (T = no segmentation); ``scratch``: an optional
    (T, *S) buffer for the decay products (allocated when None)."""
    steps = x.shape[0]
    if segment >= steps or segment <= 1:
        for t in range(steps - 2, -1, -1):
            x[t].addcmul_(decay[t + 1], x[t + 1])
        return x
    k = steps // segment
    xv = x.view(k, segment, *x.shape[1:])
    av = decay.view(k, segment, *x.shape[1:])
    # q[j, s] = decay products from step s+1 of segment j up to and including step 0 of segment j+1:
    # the factor that carries segment j+1's full first value back to step s
    q = (torch.empty_like(av) if scratch is None else scratch.view_as(av))[: k - 1]
    q[:, -1] = av[1:, 0]
    for s in range(segment - 2, -1, -1):
        xv[:, s].addcmul_(av[:, s + 1], xv[:, s + 1])
        torch.mul(av[:-1, s + 1], q[:, s + 1], out=q[:, s])
    for j in range(k - 2, -1, -1):
        xv[j, 0].addcmul_(q[j, 0], xv[j + 1, 0])
    xv[:-1, 1:].addcmul_(q[:, 1:], xv[1:, :1])
    return x
