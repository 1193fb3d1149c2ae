"""Mamba-1 selective scan: chunked vs reference (forward and every gradient), dtypes, recurrent steps,
padding invariance, input validation."""

from __future__ import annotations

import pytest
import torch

from ehrfm.ops import selective_scan_chunked, selective_scan_ref, selective_state_update

from .helpers import grads, rel_err, scan_inputs

CASES = [
    # b, d, n, L, (B groups, C groups), chunk, (D, z, delta_bias), softplus
    (2, 4, 3, 1, (None, None), 8, (True, True, True), True),
    (1, 6, 5, 17, (None, None), 4, (False, False, False), False),
    (2, 8, 4, 37, (2, 2), 8, (True, False, True), True),
    (3, 4, 2, 23, (4, None), 5, (False, True, False), False),
    (2, 6, 3, 64, (None, 3), 16, (True, True, False), True),
    (1, 4, 16, 9, (1, 1), 1, (True, True, True), False),
    (2, 4, 4, 33, (None, None), 100, (True, True, True), True),
]


@pytest.mark.parametrize("b,d,n,length,groups,chunk,opts,softplus", CASES)
def test_chunked_matches_reference_forward_and_all_gradients(
    b: int, d: int, n: int, length: int, groups: tuple, chunk: int, opts: tuple, softplus: bool
) -> None:
    inp = scan_inputs(b, d, n, length, groups, opts=opts, seed=length + d)
    out_r, last_r = selective_scan_ref(**inp, delta_softplus=softplus, return_last_state=True)
    out_c, last_c = selective_scan_chunked(
        **inp, delta_softplus=softplus, return_last_state=True, chunk_size=chunk
    )
    assert out_c.shape == (b, d, length) and last_c.shape == (b, d, n)
    assert rel_err(out_c, out_r) < 1e-5
    assert rel_err(last_c, last_r) < 1e-5
    g_r, g_c = grads([out_r, last_r], inp), grads([out_c, last_c], inp)
    assert set(g_c) == {k for k, v in inp.items() if v is not None}
    for name in g_r:
        assert rel_err(g_c[name], g_r[name]) < 1e-4, name


def test_float64_is_exact_to_double_precision() -> None:
    inp = scan_inputs(2, 4, 3, 29, (2, None), dtype=torch.float64, seed=3)
    out_r = selective_scan_ref(**inp, delta_softplus=True)
    out_c = selective_scan_chunked(**inp, delta_softplus=True, chunk_size=6)
    assert out_c.dtype == torch.float64
    assert rel_err(out_c, out_r) < 1e-12
    g_r, g_c = grads([out_r], inp), grads([out_c], inp)
    for name in g_r:
        assert rel_err(g_c[name], g_r[name]) < 1e-10, name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_upcast_inside_and_return_input_dtype(dtype: torch.dtype) -> None:
    inp = scan_inputs(2, 4, 3, 21, dtype=dtype, seed=5)
    out_c, last_c = selective_scan_chunked(**inp, delta_softplus=True, return_last_state=True, chunk_size=8)
    assert out_c.dtype == dtype and last_c.dtype == torch.float32  # as mamba-ssm: out in u's dtype
    out_r = selective_scan_ref(**inp, delta_softplus=True)
    # both compute in fp32 from the same half inputs; only the final rounding differs
    assert rel_err(out_c, out_r) < 2e-2
    g_c = grads([out_c], inp)
    assert all(g.dtype == dtype and torch.isfinite(g).all() for g in g_c.values())


def test_large_decays_stay_finite() -> None:
    inp = scan_inputs(1, 4, 4, 40, seed=9, opts=(False, False, False))
    with torch.no_grad():
        inp["delta"].mul_(20).add_(30)  # type: ignore[union-attr]  # softplus ~ 30..90 per step
        inp["A"].mul_(10)  # type: ignore[union-attr]
    out_r = selective_scan_ref(**inp, delta_softplus=True)
    out_c = selective_scan_chunked(**inp, delta_softplus=True, chunk_size=16)
    assert torch.isfinite(out_c).all()
    assert rel_err(out_c, out_r) < 1e-5
    assert all(torch.isfinite(g).all() for g in grads([out_c], inp).values())


@pytest.mark.parametrize("groups", [(None, None), (2, 2)])
def test_full_scan_equals_prefix_scan_then_recurrent_steps(groups: tuple) -> None:
    b, d, n, length, k = 2, 4, 3, 19, 11
    inp = {
        key: (v.detach() if v is not None else None)
        for key, v in scan_inputs(b, d, n, length, groups).items()
    }
    full = selective_scan_chunked(**inp, delta_softplus=True, chunk_size=4)
    prefix = {key: (v[..., :k] if v is not None and v.shape[-1] == length else v) for key, v in inp.items()}
    out_p, state = selective_scan_chunked(**prefix, delta_softplus=True, return_last_state=True, chunk_size=4)
    torch.testing.assert_close(out_p, full[..., :k], rtol=1e-5, atol=1e-6)
    u, delta, z = inp["u"], inp["delta"], inp["z"]
    B, C = inp["B"], inp["C"]
    assert u is not None and delta is not None and z is not None and B is not None and C is not None
    for t in range(k, length):
        y = selective_state_update(
            state,
            u[..., t],
            delta[..., t],
            inp["A"],
            B[..., t],
            C[..., t],
            inp["D"],
            z[..., t],  # type: ignore[arg-type]
            dt_bias=inp["delta_bias"],
            dt_softplus=True,
        )
        torch.testing.assert_close(y, full[..., t], rtol=1e-5, atol=1e-6)
    _, last = selective_scan_ref(**inp, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(state, last, rtol=1e-5, atol=1e-6)


def test_right_padding_and_other_batch_rows_do_not_change_outputs() -> None:
    inp = {k: (v.detach() if v is not None else None) for k, v in scan_inputs(3, 4, 3, 13, seed=2).items()}
    base = selective_scan_chunked(**inp, delta_softplus=True, chunk_size=4)
    padded = {
        k: (
            torch.cat([v, torch.randn(*v.shape[:-1], 6) * 5], dim=-1)
            if v is not None and v.shape[-1] == 13
            else v
        )
        for k, v in inp.items()
    }
    out_pad = selective_scan_chunked(**padded, delta_softplus=True, chunk_size=4)
    torch.testing.assert_close(out_pad[..., :13], base, rtol=1e-6, atol=1e-6)
    changed = {k: v.clone() if v is not None else None for k, v in inp.items()}
    for key in ("u", "delta", "B", "C", "z"):
        changed[key][1:] += 3.0  # type: ignore[index]
    out_rows = selective_scan_chunked(**changed, delta_softplus=True, chunk_size=4)
    torch.testing.assert_close(out_rows[0], base[0], rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out_rows[1], base[1])


def test_bad_shapes_name_the_argument() -> None:
    inp = {k: v.detach() if v is not None else None for k, v in scan_inputs(2, 4, 3, 10).items()}
    with pytest.raises(ValueError, match="delta"):
        selective_scan_chunked(**{**inp, "delta": inp["delta"][..., :9]})  # type: ignore[index]
    with pytest.raises(ValueError, match="groups"):
        selective_scan_chunked(**{**inp, "B": torch.randn(2, 3, 3, 10)})
    with pytest.raises(ValueError, match="A must be"):
        selective_scan_ref(**{**inp, "A": torch.randn(5, 3)})
    with pytest.raises(ValueError, match="chunk_size"):
        selective_scan_chunked(**inp, chunk_size=0)
