"""Which implementation runs: mamba-ssm CUDA kernels, our chunked PyTorch path, or the reference loop.

Rules (DESIGN.md principle 2): a forced path wins (``set_ops_path``/``ops_path`` context manager, then
the ``EHRFM_OPS_PATH`` environment variable, values ``ref|chunked|cuda``); otherwise the CUDA kernel
when the inputs live on a GPU *and* mamba-ssm imports, else the chunked path (on a GPU too). The kernel
packages are imported lazily, only for GPU tensors: ``import mamba_ssm`` hard-fails without its compiled
extension, so it must never run at module load on a CPU machine. The first use of each (op, path) pair
is announced once through ``logging`` and ``warnings``; ``current_ops_path()`` reports the last path."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any, cast

import torch

log = logging.getLogger("ehrfm.ops")

PATHS = ("ref", "chunked", "cuda")
ENV_VAR = "EHRFM_OPS_PATH"
INSTALL_HINT = (
    "install the CUDA kernels with `pip install ehrfm[cuda]` (mamba-ssm, causal-conv1d) on a GPU machine"
)

_forced: str | None = None
_last_path: str | None = None
_announced: set[tuple[str, str]] = set()
_kernel_cache: dict[str, Any] = {}

# op name -> (module, attribute) of the CUDA implementation
KERNELS: dict[str, tuple[str, str]] = {
    "selective_scan": ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn"),
    "ssd_chunk_scan": ("mamba_ssm.ops.triton.ssd_combined", "mamba_chunk_scan_combined"),
    "selective_state_update": ("mamba_ssm.ops.triton.selective_state_update", "selective_state_update"),
    "causal_conv1d": ("causal_conv1d", "causal_conv1d_fn"),
    "causal_conv1d_update": ("causal_conv1d", "causal_conv1d_update"),
}
KERNELS["ssd_state_update"] = KERNELS["selective_state_update"]


def _validate(path: str | None, source: str) -> str | None:
    if path is None or path == "":
        return None
    p = path.strip().lower()
    if p not in PATHS:
        raise ValueError(f"{source}: unknown ops path {path!r}; expected one of {', '.join(PATHS)}")
    return p


def set_ops_path(path: str | None) -> None:
    """Force ``'ref'``, ``'chunked'`` or ``'cuda'`` for every op (``None`` restores automatic choice).
    Takes precedence over the ``EHRFM_OPS_PATH`` environment variable."""
    global _forced
    _forced = _validate(path, "set_ops_path")


@contextlib.contextmanager
def ops_path(path: str | None) -> Iterator[None]:
    """Context manager forcing an ops path inside the ``with`` block (restores the previous setting)."""
    global _forced
    previous = _forced
    set_ops_path(path)
    try:
        yield
    finally:
        _forced = previous


def forced_path() -> str | None:
    """The forced path, from ``set_ops_path`` or else ``EHRFM_OPS_PATH`` (read at every call)."""
    return _forced or _validate(os.environ.get(ENV_VAR), ENV_VAR)


def current_ops_path() -> str | None:
    """The path taken by the most recent op call (``'ref'|'chunked'|'cuda'``), or ``None`` before any."""
    return _last_path


def reset_announcements() -> None:
    """Forget which (op, path) pairs were announced (tests use it to check warn-once behaviour)."""
    _announced.clear()


def load_kernel(op: str) -> tuple[Any | None, str]:
    """Import the CUDA implementation of ``op`` lazily; returns (callable or None, reason if None)."""
    if op in _kernel_cache:
        return cast(tuple[Any | None, str], _kernel_cache[op])
    module, attr = KERNELS[op]
    try:
        fn: Any = getattr(importlib.import_module(module), attr)
        result: tuple[Any | None, str] = (fn, "")
    except Exception as exc:  # ImportError, OSError (missing .so), RuntimeError from CUDA init ...
        result = (None, f"{module}.{attr} unavailable ({type(exc).__name__}: {exc})")
    _kernel_cache[op] = result
    return result


def choose(op: str, *tensors: torch.Tensor | None) -> tuple[str, Any | None]:
    """Pick the path for ``op`` given its input tensors; returns (path, cuda kernel or None)."""
    global _last_path
    on_gpu = any(t is not None and t.is_cuda for t in tensors)
    forced = forced_path()
    kernel: Any | None = None
    reason = f"forced by set_ops_path/{ENV_VAR}" if forced else "inputs are not on a CUDA device"
    if forced == "cuda" or (forced is None and on_gpu):
        if on_gpu:
            kernel, reason = load_kernel(op)
        if forced == "cuda" and kernel is None:
            why = reason if on_gpu else "inputs are not on a CUDA device"
            raise RuntimeError(f"{op}: path 'cuda' was forced but {why}; {INSTALL_HINT}")
    path = forced if forced is not None else ("cuda" if kernel is not None else "chunked")
    _last_path = path
    _announce(op, path, reason)
    return path, kernel


def _announce(op: str, path: str, reason: str) -> None:
    key = (op, path)
    if key in _announced:
        return
    _announced.add(key)
    if path == "cuda":
        msg = f"ehrfm.ops.{op}: using the mamba-ssm/causal-conv1d CUDA kernel"
    elif path == "ref":
        msg = f"ehrfm.ops.{op}: using the reference loop over time (slow; forced by set_ops_path/{ENV_VAR})"
    else:
        kind = "chunked PyTorch" if op in ("selective_scan", "ssd_chunk_scan") else "PyTorch"
        msg = f"ehrfm.ops.{op}: using the {kind} path ({reason}); for the fast GPU kernel {INSTALL_HINT}"
    log.warning(msg)
    warnings.warn(msg, RuntimeWarning, stacklevel=4)
