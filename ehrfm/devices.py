"""Where a model runs: one reading of ``cpu`` / ``cuda`` / ``cuda:<n>`` / ``auto`` for every stage that picks
a device (serving, simulation), with a clear error instead of torch's when a GPU is asked for and none is
visible. Imports torch only inside the functions (a module that names a device stays torch-free)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ehrfm.config.base import ConfigError

if TYPE_CHECKING:
    import torch

DEVICE_CHOICES = "cpu, cuda, cuda:<n> or auto"


def resolve_device(value: str, field: str) -> torch.device:
    """``value`` as a torch device: ``auto`` is the first CUDA GPU when one is visible, else the CPU.
    Raises :class:`ConfigError` naming ``field`` (a config key or an environment variable) for anything else
    than :data:`DEVICE_CHOICES`, and for a CUDA device that this process cannot see."""
    import torch

    text = str(value).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{field}={value!r}: expected {DEVICE_CHOICES}") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{field}={value!r}: expected {DEVICE_CHOICES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"{field}={value!r}: no CUDA GPU is visible to this process (torch "
                              f"{torch.__version__}, built for CUDA {torch.version.cuda}); use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"{field}={value!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    return device


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """A collated batch with its tensors on ``device`` (other values as they are; no copy when already
    there)."""
    import torch

    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
