"""Heads: shapes, BCE, and the discrete-time hazard NLL against a hand computation (events and censoring)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ehrfm.train.heads import BinaryHead, HazardHead, HeadSpec, TaskHeads, hazard_nll, survival_curve

EDGES = torch.tensor([0.0, 30.0, 90.0, 180.0, 365.0])


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_shapes() -> None:
    pooled = torch.randn(5, 16)
    assert BinaryHead(16)(pooled).shape == (5,)
    assert HazardHead(16, 4)(pooled).shape == (5, 4)
    heads = TaskHeads([HeadSpec("a", "binary"), HeadSpec("t", "tte", [0, 10, 20])], 16)
    assert heads("a", pooled).shape == (5,) and heads("t", pooled).shape == (5, 2)
    with pytest.raises(KeyError, match="no head for task 'zz'"):
        heads("zz", pooled)


def test_hazard_nll_hand_case() -> None:
    x = torch.tensor([[-1.0, 0.5, -2.0, 0.3]] * 5)
    h = [_sig(v) for v in x[0].tolist()]
    dur = torch.tensor([45.0, 45.0, 180.0, 400.0, 0.0])
    ev = torch.tensor([1, 0, 0, 1, 1])
    expected = [
        -(math.log(1 - h[0]) + math.log(h[1])),  # event in (30, 90]: survived bin 0, hazard of bin 1
        -math.log(1 - h[0]),  # censored inside bin 1: only survival through bin 0
        # censored at the edge 180: 3 bins done
        -(math.log(1 - h[0]) + math.log(1 - h[1]) + math.log(1 - h[2])),
        -sum(math.log(1 - v) for v in h),  # event after the last edge: alive through every bin
        -math.log(h[0]),  # event at day 0: first bin
    ]
    for i, e in enumerate(expected):
        got = hazard_nll(x[i : i + 1], dur[i : i + 1], ev[i : i + 1], EDGES)
        assert got.item() == pytest.approx(e, rel=1e-5), i
    assert hazard_nll(x, dur, ev, EDGES).item() == pytest.approx(sum(expected) / 5, rel=1e-5)


def test_hazard_nll_gradient_direction_and_edges_check() -> None:
    x = torch.zeros(2, 4, requires_grad=True)
    hazard_nll(x, torch.tensor([50.0, 50.0]), torch.tensor([1, 0]), EDGES).backward()
    assert x.grad is not None
    assert x.grad[0, 1] < 0 and x.grad[0, 0] > 0  # event: raise its bin's hazard, lower the earlier one
    assert x.grad[1, 0] > 0 and x.grad[1, 1] == 0  # censored in bin 1: bin 1 itself carries no information
    with pytest.raises(ValueError, match="need 5 edges"):
        hazard_nll(torch.zeros(1, 4), torch.ones(1), torch.ones(1), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="edges_days"):
        HeadSpec("t", "tte", [5, 10])


def test_survival_curve() -> None:
    x = torch.randn(3, 4)
    s = survival_curve(x)
    assert s.shape == (3, 5) and torch.allclose(s[:, 0], torch.ones(3))
    assert torch.all(s[:, 1:] <= s[:, :-1])
    assert torch.allclose(s[:, -1], torch.prod(1 - torch.sigmoid(x), dim=1))


def test_binary_loss_is_bce() -> None:
    heads = TaskHeads([HeadSpec("a", "binary")], 8, dropout=0.0)
    pooled, y = torch.randn(6, 8), torch.tensor([0, 1, 1, 0, 1, 0.0])
    expected = F.binary_cross_entropy_with_logits(heads("a", pooled), y)
    assert torch.allclose(heads.loss("a", pooled, {"label": y}), expected)
