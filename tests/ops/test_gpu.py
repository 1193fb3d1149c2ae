"""GPU checks: our chunked paths on CUDA tensors, and the mamba-ssm / causal-conv1d kernels against the
reference (skipped without a GPU by tests/conftest.py; kernel tests also need mamba-ssm installed)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from ehrfm.ops import (
    causal_conv1d,
    current_ops_path,
    ops_path,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
    selective_state_update,
    ssd_chunk_scan,
    ssd_chunked,
    ssd_ref,
    ssd_state_update,
)
from ehrfm.ops.mamba3 import mamba3_chunked, mamba3_scan
from ehrfm.ops.mamba3_ref import mamba3_ref

from .helpers import grads, rel_err, scan_inputs, ssd_inputs
from .test_mamba3 import all_grads, mamba3_inputs

pytestmark = pytest.mark.gpu


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} not installed (pip install ehrfm[cuda])")


@pytest.mark.parametrize("groups", [(None, None), (2, 2)])
def test_chunked_on_gpu_matches_reference(groups: tuple) -> None:
    inp = scan_inputs(2, 8, 4, 97, groups, device="cuda")
    out_r = selective_scan_ref(**inp, delta_softplus=True)
    out_c = selective_scan_chunked(**inp, delta_softplus=True, chunk_size=16)
    assert rel_err(out_c, out_r) < 1e-5
    g_r, g_c = grads([out_r], inp), grads([out_c], inp)
    for k in g_r:
        assert rel_err(g_c[k], g_r[k]) < 1e-4, k
    s_inp = ssd_inputs(2, 97, 4, 8, 2, 16, device="cuda")
    assert rel_err(ssd_chunked(**s_inp, chunk_size=32), ssd_ref(**s_inp)) < 1e-5


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_scan_kernel_matches_reference(dtype: torch.dtype) -> None:
    _need("mamba_ssm")
    inp = scan_inputs(2, 16, 8, 257, (None, None), dtype=dtype, device="cuda")
    for name in ("A", "D", "delta_bias"):  # the kernel wants fp32 weights whatever the input dtype
        inp[name] = inp[name].detach().float().requires_grad_()  # type: ignore[union-attr]
    out_k, last_k = selective_scan(**inp, delta_softplus=True, return_last_state=True)
    assert current_ops_path() == "cuda"
    out_r, last_r = selective_scan_ref(**inp, delta_softplus=True, return_last_state=True)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    assert rel_err(out_k, out_r) < tol and rel_err(last_k, last_r) < tol
    g_k, g_r = grads([out_k], inp), grads([out_r], inp)
    for k in g_r:
        assert rel_err(g_k[k], g_r[k]) < (1e-3 if dtype == torch.float32 else 5e-2), k
    with ops_path("chunked"):
        assert rel_err(selective_scan(**inp, delta_softplus=True), out_r) < tol  # type: ignore[arg-type]


def test_ssd_kernel_matches_reference() -> None:
    _need("mamba_ssm")
    inp = ssd_inputs(2, 200, 4, 64, 1, 64, device="cuda")
    y_k, s_k = ssd_chunk_scan(**inp, chunk_size=64, dt_softplus=True, return_final_states=True)
    assert current_ops_path() == "cuda"
    y_r, s_r = ssd_ref(**inp, dt_softplus=True, return_final_states=True)
    assert rel_err(y_k, y_r) < 1e-3 and rel_err(s_k, s_r) < 1e-3
    g_k, g_r = grads([y_k], inp), grads([y_r], inp)
    for k in g_r:
        assert rel_err(g_k[k], g_r[k]) < 5e-3, k


def test_state_update_kernels_match_reference() -> None:
    _need("mamba_ssm")
    b, d, n = 2, 16, 8
    state = torch.randn(b, d, n, device="cuda")
    ref_state = state.clone()
    x, dt, z = (torch.randn(b, d, device="cuda") for _ in range(3))
    A = -torch.rand(d, n, device="cuda")
    B, C = torch.randn(b, 2, n, device="cuda"), torch.randn(b, 2, n, device="cuda")
    D, bias = torch.randn(d, device="cuda"), torch.randn(d, device="cuda")
    y_k = selective_state_update(state, x, dt, A, B, C, D, z, bias, True)
    assert current_ops_path() == "cuda"
    with ops_path("ref"):
        y_r = selective_state_update(ref_state, x, dt, A, B, C, D, z, bias, True)
    torch.testing.assert_close(y_k, y_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(state, ref_state, rtol=1e-4, atol=1e-4)
    h, p, g = 4, 8, 2
    s = torch.randn(b, h, p, n, device="cuda")
    s_ref = s.clone()
    xs, zs = torch.randn(b, h, p, device="cuda"), torch.randn(b, h, p, device="cuda")
    dts, Ah, Dh, bh = (
        torch.randn(b, h, device="cuda"),
        -torch.rand(h, device="cuda"),
        torch.randn(h, device="cuda"),
        torch.randn(h, device="cuda"),
    )
    Bs, Cs = torch.randn(b, g, n, device="cuda"), torch.randn(b, g, n, device="cuda")
    y_k = ssd_state_update(s, xs, dts, Ah, Bs, Cs, Dh, zs, bh, True)
    with ops_path("ref"):
        y_r = ssd_state_update(s_ref, xs, dts, Ah, Bs, Cs, Dh, zs, bh, True)
    torch.testing.assert_close(y_k, y_r, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s, s_ref, rtol=1e-4, atol=1e-4)


def test_causal_conv1d_kernel_matches_torch() -> None:
    _need("causal_conv1d")
    x, w, bias = (
        torch.randn(2, 64, 100, device="cuda"),
        torch.randn(64, 4, device="cuda"),
        torch.randn(64, device="cuda"),
    )
    out_k = causal_conv1d(x, w, bias, activation="silu")
    assert current_ops_path() == "cuda"
    with ops_path("chunked"):
        out_t = causal_conv1d(x, w, bias, activation="silu")
    torch.testing.assert_close(out_k, out_t, rtol=1e-4, atol=1e-4)


def _need_mamba3(module: str) -> None:
    try:  # a submodule: its import may fail for want of triton / tilelang even with mamba-ssm installed
        importlib.import_module(module)
    except Exception as exc:
        pytest.skip(f"{module} unavailable ({type(exc).__name__}: {exc})")


def test_mamba3_chunked_on_gpu_matches_reference() -> None:
    inp, st = mamba3_inputs(2, 97, 2, 1, 4, 16, 8, 4, dtype=torch.float32, device="cuda")
    with ops_path("chunked"):
        y_c = mamba3_chunked(**inp, rope="halves", chunk_size=16, initial_states=st)  # type: ignore[arg-type]
    y_r = mamba3_ref(**inp, rope="halves", initial_states=st)  # type: ignore[arg-type]
    assert isinstance(y_c, torch.Tensor) and rel_err(y_c, y_r) < 1e-4  # type: ignore[arg-type]
    leaves = {**inp, **(st._asdict() if st is not None else {})}
    g_c, g_r = all_grads([y_c], leaves), all_grads([y_r], leaves)  # type: ignore[list-item]
    for k in g_r:
        assert rel_err(g_c[k], g_r[k]) < 1e-3, k


@pytest.mark.parametrize("rank", [1, 4])
def test_mamba3_kernels_match_reference(rank: int) -> None:
    _need_mamba3("mamba_ssm.ops.triton.mamba3.mamba3_siso_combined" if rank == 1
                 else "mamba_ssm.ops.tilelang.mamba3.mamba3_mimo")
    # the kernels' tested shapes: dstate / headdim powers of two, rotate a quarter (MIMO) or half the state
    inp, _ = mamba3_inputs(2, 256, rank, 1, 4, 64, 64, 16, mimo=rank > 1, dtype=torch.float32, device="cuda",
                           opts=(True, True, False))
    rope = "interleaved" if rank == 1 else "halves"
    chunk = 64 // rank
    y_k, f_k = mamba3_scan(**inp, rope=rope, chunk_size=chunk, return_final_states=True)  # type: ignore[arg-type]
    assert current_ops_path() == "cuda"
    y_r, f_r = mamba3_ref(**inp, rope=rope, return_final_states=True)  # type: ignore[arg-type]
    assert rel_err(y_k, y_r) < 3e-2  # bf16 inside the kernels
    assert rel_err(f_k.ssm, f_r.ssm) < 3e-2 and rel_err(f_k.k, f_r.k) < 3e-2
    g_k, g_r = all_grads([y_k], inp), all_grads([y_r], inp)
    for k in g_r:
        assert rel_err(g_k[k], g_r[k]) < 6e-2, k
