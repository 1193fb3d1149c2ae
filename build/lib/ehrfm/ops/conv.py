"""Depthwise causal 1-D convolution used by the Mamba blocks, with the causal-conv1d kernel on a GPU."""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from ehrfm.ops.dispatch import choose

_ACTIVATIONS = (None, "silu", "swish")


def _activate(x: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation not in _ACTIVATIONS:
        raise ValueError(f"causal_conv1d: activation must be one of {_ACTIVATIONS}, got {activation!r}")
    return x if activation is None else F.silu(x)


def causal_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None
) -> torch.Tensor:
    """Depthwise causal convolution: ``out[b, d, t] = act(bias[d] + sum_k weight[d, k] * x[b, d, t-w+1+k])``.

    x: (batch, dim, L); weight: (dim, width); bias: (dim,); activation: None, "silu" or "swish".
    Returns (batch, dim, L) in x's dtype. Position t sees inputs at t-width+1..t only.
    """
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"causal_conv1d: x must be (batch, dim, L) and weight (dim, width); got x {tuple(x.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    _activate(x[:0], activation)  # validates the name before any kernel runs
    path, kernel = choose("causal_conv1d", x, weight)
    if path == "cuda" and kernel is not None:
        return cast(torch.Tensor, kernel(x, weight, bias, activation=activation))
    width = weight.shape[1]
    out = F.conv1d(
        x,
        weight.unsqueeze(1).to(x.dtype),
        None if bias is None else bias.to(x.dtype),
        padding=width - 1,
        groups=x.shape[1],
    )
    return _activate(out[..., : x.shape[-1]], activation)


def causal_conv1d_update(
    x: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
) -> torch.Tensor:
    """One generation step of :func:`causal_conv1d`; ``conv_state`` (batch, dim, width) holds the last
    ``width`` inputs and is shifted in place (new input last, as in mamba-ssm's Mamba block).

    x: (batch, dim); weight: (dim, width); bias: (dim,). Returns (batch, dim) in x's dtype.
    """
    if x.dim() != 2 or tuple(conv_state.shape) != (x.shape[0], x.shape[1], weight.shape[1]):
        raise ValueError(
            f"causal_conv1d_update: x must be (batch, dim) and conv_state (batch, dim, width); got x "
            f"{tuple(x.shape)}, conv_state {tuple(conv_state.shape)}, weight {tuple(weight.shape)}"
        )
    _activate(x[:0], activation)
    path, kernel = choose("causal_conv1d_update", x, conv_state)
    if path == "cuda" and kernel is not None:
        return cast(torch.Tensor, kernel(x, conv_state, weight, bias, activation))
    conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
    conv_state[:, :, -1] = x
    out = (conv_state * weight.to(conv_state.dtype)).sum(-1)
    if bias is not None:
        out = out + bias.to(out.dtype)
    return _activate(out, activation).to(x.dtype)
