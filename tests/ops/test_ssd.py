"""Mamba-2 SSD: chunked vs reference (forward and every gradient), recurrent steps, initial-state carry,
padding invariance, dtypes, validation."""

from __future__ import annotations

import pytest
import torch

from ehrfm.ops import ssd_chunked, ssd_ref, ssd_state_update
from ehrfm.ops.ssd import segsum

from .helpers import grads, rel_err, ssd_inputs

CASES = [
    # b, L, h, p, g, n, chunk, d_per_dim, (D, z, dt_bias, initial_states), softplus
    (2, 1, 2, 3, 1, 4, 8, False, (True, True, True, True), True),
    (1, 17, 4, 2, 2, 3, 4, True, (True, False, True, False), True),
    (2, 37, 4, 3, 4, 5, 8, False, (False, True, False, True), False),
    (2, 64, 2, 4, 1, 8, 16, True, (True, True, True, True), True),
    (1, 23, 3, 2, 1, 2, 64, False, (False, False, False, False), False),
]


@pytest.mark.parametrize("b,length,h,p,g,n,chunk,d_per_dim,opts,softplus", CASES)
def test_chunked_matches_reference_forward_and_all_gradients(
    b: int,
    length: int,
    h: int,
    p: int,
    g: int,
    n: int,
    chunk: int,
    d_per_dim: bool,
    opts: tuple,
    softplus: bool,
) -> None:
    inp = ssd_inputs(b, length, h, p, g, n, d_per_dim=d_per_dim, opts=opts, seed=length)
    y_r, s_r = ssd_ref(**inp, chunk_size=chunk, dt_softplus=softplus, return_final_states=True)
    y_c, s_c = ssd_chunked(**inp, chunk_size=chunk, dt_softplus=softplus, return_final_states=True)
    assert y_c.shape == (b, length, h, p) and s_c.shape == (b, h, p, n)
    assert rel_err(y_c, y_r) < 1e-5
    assert rel_err(s_c, s_r) < 1e-5
    g_r, g_c = grads([y_r, s_r], inp), grads([y_c, s_c], inp)
    for name in g_r:
        assert rel_err(g_c[name], g_r[name]) < 1e-4, name


def test_float64_and_half_dtypes() -> None:
    inp = ssd_inputs(2, 21, 2, 3, 1, 4, dtype=torch.float64, seed=4)
    y_r, y_c = ssd_ref(**inp, dt_softplus=True), ssd_chunked(**inp, chunk_size=8, dt_softplus=True)
    assert y_c.dtype == torch.float64 and rel_err(y_c, y_r) < 1e-12
    half = ssd_inputs(2, 21, 2, 3, 1, 4, dtype=torch.bfloat16, seed=4)
    y_h, s_h = ssd_chunked(**half, chunk_size=8, dt_softplus=True, return_final_states=True)
    assert y_h.dtype == torch.bfloat16 and s_h.dtype == torch.float32
    assert rel_err(y_h, ssd_ref(**half, dt_softplus=True)) < 2e-2


def test_segsum_is_stable_and_masked() -> None:
    x = torch.tensor([1.0, -2.0, 3.0])
    s = segsum(x)
    expected = torch.tensor([[0.0, -torch.inf, -torch.inf], [-2.0, 0.0, -torch.inf], [1.0, 3.0, 0.0]])
    assert torch.equal(s, expected)


def test_two_halves_with_initial_states_equal_the_whole() -> None:
    inp = {k: v.detach() if v is not None else None for k, v in ssd_inputs(2, 30, 4, 3, 2, 5, seed=8).items()}
    y, final = ssd_chunked(**inp, chunk_size=8, dt_softplus=True, return_final_states=True)
    k = 13

    def part(sl: slice, init: torch.Tensor | None) -> dict:
        return {key: (v[:, sl] if key in ("x", "dt", "B", "C", "z") else v) for key, v in inp.items()} | {
            "initial_states": init
        }

    y1, s1 = ssd_chunked(
        **part(slice(0, k), inp["initial_states"]), chunk_size=8, dt_softplus=True, return_final_states=True
    )
    y2, s2 = ssd_chunked(**part(slice(k, None), s1), chunk_size=8, dt_softplus=True, return_final_states=True)
    torch.testing.assert_close(torch.cat([y1, y2], dim=1), y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2, final, rtol=1e-5, atol=1e-5)


def test_full_scan_equals_prefix_then_recurrent_steps() -> None:
    inp = {k: v.detach() if v is not None else None for k, v in ssd_inputs(2, 15, 4, 3, 2, 5, seed=6).items()}
    y = ssd_chunked(**inp, chunk_size=4, dt_softplus=True)
    k = 9
    pre = {key: (v[:, :k] if key in ("x", "dt", "B", "C", "z") else v) for key, v in inp.items()}
    _, state = ssd_chunked(**pre, chunk_size=4, dt_softplus=True, return_final_states=True)
    x, dt, B, C, z = (inp[key] for key in ("x", "dt", "B", "C", "z"))
    assert x is not None and dt is not None and B is not None and C is not None and z is not None
    for t in range(k, 15):
        y_t = ssd_state_update(
            state,
            x[:, t],
            dt[:, t],
            inp["A"],
            B[:, t],
            C[:, t],
            inp["D"],
            z[:, t],  # type: ignore[arg-type]
            dt_bias=inp["dt_bias"],
            dt_softplus=True,
        )
        torch.testing.assert_close(y_t, y[:, t], rtol=1e-5, atol=1e-5)


def test_right_padding_does_not_change_real_positions() -> None:
    inp = {k: v.detach() if v is not None else None for k, v in ssd_inputs(2, 11, 2, 3, 1, 4, seed=1).items()}
    base = ssd_chunked(**inp, chunk_size=4, dt_softplus=True)
    padded = {
        k: (
            torch.cat([v, torch.randn(v.shape[0], 5, *v.shape[2:]) * 4], dim=1)
            if k in ("x", "dt", "B", "C", "z")
            else v
        )
        for k, v in inp.items()
    }
    torch.testing.assert_close(
        ssd_chunked(**padded, chunk_size=4, dt_softplus=True)[:, :11], base, rtol=1e-6, atol=1e-6
    )


def test_bad_shapes_name_the_argument() -> None:
    inp = {k: v.detach() if v is not None else None for k, v in ssd_inputs(2, 8, 4, 3, 2, 5).items()}
    with pytest.raises(ValueError, match="dt must have shape"):
        ssd_chunked(**{**inp, "dt": torch.randn(2, 7, 4)})
    with pytest.raises(ValueError, match="groups"):
        ssd_chunked(**{**inp, "B": torch.randn(2, 8, 3, 5), "C": torch.randn(2, 8, 3, 5)})
    with pytest.raises(ValueError, match="initial_states"):
        ssd_ref(**{**inp, "initial_states": torch.randn(2, 4, 3, 4)})
