"""Selective scan (Mamba-1) and SSD (Mamba-2): reference loops, fast chunked PyTorch paths and the
mamba-ssm CUDA kernels behind one dispatcher (see :mod:`ehrfm.ops.dispatch` for the rules).

Nothing here imports mamba-ssm at module load: the kernels are probed lazily for GPU tensors only."""

from ehrfm.ops.conv import causal_conv1d, causal_conv1d_update
from ehrfm.ops.dispatch import current_ops_path, ops_path, set_ops_path
from ehrfm.ops.reference import selective_scan_ref, selective_state_update_ref, ssd_ref, ssd_state_update_ref
from ehrfm.ops.scan import selective_scan, selective_state_update, ssd_chunk_scan, ssd_state_update
from ehrfm.ops.scan_chunked import selective_scan_chunked
from ehrfm.ops.ssd import ssd_chunked

__all__ = [
    "causal_conv1d",
    "causal_conv1d_update",
    "current_ops_path",
    "ops_path",
    "selective_scan",
    "selective_scan_chunked",
    "selective_scan_ref",
    "selective_state_update",
    "selective_state_update_ref",
    "set_ops_path",
    "ssd_chunk_scan",
    "ssd_chunked",
    "ssd_ref",
    "ssd_state_update",
    "ssd_state_update_ref",
]
