"""Dispatcher: forcing by env var / set_ops_path / context manager, warn-once, current_ops_path, lazy
CUDA-kernel probing (mamba-ssm must never be imported for CPU tensors)."""

from __future__ import annotations

import logging
import sys
import warnings
from types import SimpleNamespace

import pytest
import torch

from ehrfm.ops import (
    current_ops_path,
    ops_path,
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
    set_ops_path,
    ssd_chunk_scan,
)
from ehrfm.ops import dispatch as dispatch_mod

from .helpers import scan_inputs, ssd_inputs


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EHRFM_OPS_PATH", raising=False)
    set_ops_path(None)
    dispatch_mod.reset_announcements()


def _inp() -> dict:
    return {k: v.detach() if v is not None else None for k, v in scan_inputs(1, 4, 3, 9).items()}


def test_cpu_inputs_take_the_chunked_path_without_importing_mamba_ssm() -> None:
    out = selective_scan(**_inp(), delta_softplus=True)
    assert current_ops_path() == "chunked"
    torch.testing.assert_close(out, selective_scan_chunked(**_inp(), delta_softplus=True))
    assert "mamba_ssm" not in sys.modules and "causal_conv1d" not in sys.modules


@pytest.mark.parametrize("path", ["ref", "chunked"])
def test_env_var_forces_the_path(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    monkeypatch.setenv("EHRFM_OPS_PATH", path)
    selective_scan(**_inp())
    assert current_ops_path() == path
    ssd = {k: v.detach() if v is not None else None for k, v in ssd_inputs(1, 6, 2, 2, 1, 3).items()}
    ssd_chunk_scan(**ssd, chunk_size=4)
    assert current_ops_path() == path


def test_set_ops_path_and_context_manager_take_precedence_and_restore(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EHRFM_OPS_PATH", "chunked")
    set_ops_path("ref")
    selective_scan(**_inp())
    assert current_ops_path() == "ref"
    with ops_path("chunked"):
        selective_scan(**_inp())
        assert current_ops_path() == "chunked"
    selective_scan(**_inp())
    assert current_ops_path() == "ref"
    set_ops_path(None)
    out = selective_scan(**_inp())
    assert current_ops_path() == "chunked"
    torch.testing.assert_close(out, selective_scan_ref(**_inp()), rtol=1e-5, atol=1e-6)


def test_bad_path_values_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="set_ops_path"):
        set_ops_path("fast")
    monkeypatch.setenv("EHRFM_OPS_PATH", "triton")
    with pytest.raises(ValueError, match="EHRFM_OPS_PATH"):
        selective_scan(**_inp())


def test_forcing_cuda_on_cpu_tensors_fails_with_the_install_hint() -> None:
    with (
        ops_path("cuda"),
        pytest.raises(RuntimeError, match=r"not on a CUDA device.*pip install ehrfm\[cuda\]"),
    ):
        selective_scan(**_inp())


def test_path_is_announced_once_per_op_and_path(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="ehrfm.ops")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            selective_scan(**_inp())
        with ops_path("ref"):
            selective_scan(**_inp())
    msgs = [str(w.message) for w in caught if "ehrfm.ops" in str(w.message)]
    assert len(msgs) == 2
    assert "chunked PyTorch path" in msgs[0] and "pip install ehrfm[cuda]" in msgs[0]
    assert "reference loop" in msgs[1]
    assert [r.getMessage() for r in caplog.records if r.name == "ehrfm.ops"] == msgs


def test_auto_choice_for_gpu_tensors_uses_the_kernel_when_it_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    gpu_like = SimpleNamespace(is_cuda=True)  # choose() only looks at .is_cuda
    kernel = object()
    monkeypatch.setattr(dispatch_mod, "load_kernel", lambda op: (kernel, ""))
    assert dispatch_mod.choose("selective_scan", gpu_like) == ("cuda", kernel)  # type: ignore[arg-type]
    assert current_ops_path() == "cuda"
    monkeypatch.setattr(dispatch_mod, "load_kernel", lambda op: (None, "mamba_ssm unavailable (ImportError)"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert dispatch_mod.choose("selective_scan", gpu_like) == ("chunked", None)  # type: ignore[arg-type]
    assert "mamba_ssm unavailable" in str(caught[0].message)
    with ops_path("ref"):
        assert dispatch_mod.choose("selective_scan", gpu_like)[0] == "ref"  # type: ignore[arg-type]


def test_missing_kernel_package_is_reported_not_raised() -> None:
    dispatch_mod._kernel_cache.pop("causal_conv1d", None)
    fn, reason = dispatch_mod.load_kernel("causal_conv1d")
    if fn is None:  # the CPU case: the package is absent or cannot load its CUDA extension
        assert "causal_conv1d" in reason
