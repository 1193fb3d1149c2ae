"""Segmented linear recurrences (ehrfm.ops.linscan), chunk/segment plans and the scan thread policy."""

from __future__ import annotations

import pytest
import torch

from ehrfm.ops import selective_scan_chunked, selective_scan_ref
from ehrfm.ops.linscan import (
    THREADS_ENV,
    auto_segment,
    scan_forward_,
    scan_reverse_,
    scan_threads,
    segment_for,
)
from ehrfm.ops.scan_chunked import MAX_CHUNK, MIN_CHUNK, auto_chunk

from .helpers import grads, rel_err, scan_inputs


def _problem(steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(steps, 3, 5, generator=gen, dtype=torch.float64)
    decay = torch.rand(steps, 3, 5, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    decay[steps // 2, 0] = 0.0  # a full reset mid-sequence must not poison anything (no divisions)
    h0 = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    return x, decay, h0


@pytest.mark.parametrize("segment", [1, 2, 3, 4, 6, 12])
def test_forward_scan_matches_a_step_loop_for_every_segment(segment: int) -> None:
    x, decay, h0 = _problem(12)
    want, h = torch.empty_like(x), h0
    for t in range(12):
        h = decay[t] * h + x[t]
        want[t] = h
    got = scan_forward_(x.clone(), decay, h0, segment)
    assert torch.allclose(got, want, rtol=1e-13, atol=1e-13)
    got_scratch = scan_forward_(x.clone(), decay, h0, segment, scratch=torch.full_like(x, float("nan")))
    assert torch.allclose(got_scratch, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("segment", [1, 2, 3, 4, 6, 12])
def test_reverse_scan_matches_a_step_loop_for_every_segment(segment: int) -> None:
    x, decay, _ = _problem(12, seed=1)
    want, g = torch.empty_like(x), torch.zeros_like(x[0])
    for t in range(11, -1, -1):
        g = x[t] + (decay[t + 1] * g if t < 11 else 0.0)
        want[t] = g
    got = scan_reverse_(x.clone(), decay, segment, scratch=torch.full_like(x, float("nan")))
    assert torch.allclose(got, want, rtol=1e-13, atol=1e-13)


def test_plans_divide_the_chunk_and_stay_in_bounds() -> None:
    for steps in (1, 2, 7, 16, 17, 64, 256):
        s = auto_segment(steps, 100)
        assert steps % s == 0 and 1 <= s <= steps
    assert auto_segment(256, 1 << 15) == 256  # big steps: plain loop, no segments
    assert auto_segment(256, 2048) == 16
    assert segment_for(12, 5) == 4 and segment_for(7, 4) == 1 and segment_for(3, 8) == 3
    for numel in (1, 2048, 8192, 32768, 1 << 22):
        t = auto_chunk(numel)
        assert MIN_CHUNK <= t <= MAX_CHUNK and t & (t - 1) == 0
    assert auto_chunk(2048) > auto_chunk(32768)


@pytest.mark.parametrize("chunk,segment", [(12, 3), (12, 4), (8, 8), (None, None), (5, 2)])
def test_chunked_scan_with_segments_matches_reference_and_gradients(chunk: int | None,
                                                                    segment: int | None) -> None:
    inp = scan_inputs(2, 4, 3, 29, (None, 2), seed=11)  # 29 = ragged last chunk
    out_r, last_r = selective_scan_ref(**inp, delta_softplus=True, return_last_state=True)
    out_c, last_c = selective_scan_chunked(
        **inp, delta_softplus=True, return_last_state=True, chunk_size=chunk, segment_size=segment
    )
    assert rel_err(out_c, out_r) < 1e-5 and rel_err(last_c, last_r) < 1e-5
    g_r, g_c = grads([out_r, last_r], inp), grads([out_c, last_c], inp)
    for name in g_r:
        assert rel_err(g_c[name], g_r[name]) < 1e-4, name


def test_segment_size_is_validated() -> None:
    inp = scan_inputs(1, 2, 2, 4, seed=0)
    with pytest.raises(ValueError, match="segment_size"):
        selective_scan_chunked(**inp, segment_size=0)


def test_scan_threads_uses_one_thread_for_small_steps_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_ENV, raising=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with scan_threads(1024) as n:
            assert n == 1 == torch.get_num_threads()
        assert torch.get_num_threads() == 2
        with scan_threads(1 << 22) as n:
            assert n == 2
        monkeypatch.setenv(THREADS_ENV, "3")
        with scan_threads(1024) as n:
            assert n == 3 == torch.get_num_threads()
        assert torch.get_num_threads() == 2
        monkeypatch.setenv(THREADS_ENV, "zero")
        with pytest.raises(ValueError, match=THREADS_ENV), scan_threads(1024):
            pass
    finally:
        torch.set_num_threads(before)
