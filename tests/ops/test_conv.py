"""Causal depthwise conv1d and its one-step update."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ehrfm.ops import causal_conv1d, causal_conv1d_update


def _naive(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    b, d, length = x.shape
    out = torch.zeros_like(x)
    for t in range(length):
        for k in range(w.shape[1]):
            src = t - w.shape[1] + 1 + k
            if src >= 0:
                out[:, :, t] += w[:, k] * x[:, :, src]
    return out + bias[:, None]


def test_matches_naive_causal_convolution_and_is_causal() -> None:
    x, w, bias = torch.randn(2, 3, 10), torch.randn(3, 4), torch.randn(3)
    out = causal_conv1d(x, w, bias, activation="silu")
    torch.testing.assert_close(out, F.silu(_naive(x, w, bias)))
    x2 = x.clone()
    x2[:, :, 6:] += 10.0
    torch.testing.assert_close(causal_conv1d(x2, w, bias)[:, :, :6], causal_conv1d(x, w, bias)[:, :, :6])


def test_update_steps_reproduce_the_full_convolution() -> None:
    x, w, bias = torch.randn(2, 3, 9), torch.randn(3, 4), torch.randn(3)
    full = causal_conv1d(x, w, bias, activation="swish")
    state = torch.zeros(2, 3, 4)
    steps = [causal_conv1d_update(x[:, :, t], state, w, bias, activation="swish") for t in range(9)]
    torch.testing.assert_close(torch.stack(steps, dim=-1), full)


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="weight"):
        causal_conv1d(torch.randn(2, 3, 5), torch.randn(4, 2))
    with pytest.raises(ValueError, match="activation"):
        causal_conv1d(torch.randn(2, 3, 5), torch.randn(3, 2), activation="relu")
    with pytest.raises(ValueError, match="conv_state"):
        causal_conv1d_update(torch.randn(2, 3), torch.zeros(2, 3, 3), torch.randn(3, 4))
