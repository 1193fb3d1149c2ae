"""Finetuning heads on the pooled last-token state (the trailing task prompt token of a task row).

- :class:`BinaryHead`: one logit, BCE; probability = sigmoid.
- :class:`HazardHead`: discrete-time hazards over ``K`` bins with edges ``0 = e_0 < e_1 < ... < e_K`` days;
  bin ``k`` is ``(e_k, e_{k+1}]``. ``h_k = sigmoid(logit_k)`` is P(event in bin k | alive at e_k), and
  ``S(e_{k+1}) = prod_{j<=k} (1 - h_j)``. The censoring-aware negative log-likelihood
  (:func:`hazard_nll`): an event in bin ``k`` contributes ``-log h_k - sum_{j<k} log(1 - h_j)``; a row
  censored at ``d`` contributes only survival through the bins it completed alive (``e_{j+1} <= d``):
  censored inside bin ``k`` we know it was alive at ``e_k``, not whether it survived bin ``k``. Events
  after the last edge count as alive through every bin.
- Forecasting has no head of its own: it reads the LM head (see :mod:`ehrfm.train.generate`).

:class:`HeadSpec` is the JSON-serialisable description saved with a finetuned model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ehrfm.config.train import DEFAULT_TTE_EDGES

HeadKind = Literal["binary", "tte", "forecast"]
DEFAULT_EDGES = list(DEFAULT_TTE_EDGES)


@dataclass
class HeadSpec:
    """What a task predicts: ``kind`` and, for ``tte``, the bin edges in days (first edge 0)."""

    task: str
    kind: HeadKind
    edges_days: list[float] = field(default_factory=lambda: list(DEFAULT_EDGES))

    def __post_init__(self) -> None:
        if self.kind not in ("binary", "tte", "forecast"):
            raise ValueError(f"HeadSpec({self.task}).kind={self.kind!r}: expected binary, tte or forecast")
        e = [float(x) for x in self.edges_days]
        increasing = all(a < b for a, b in zip(e, e[1:], strict=False))
        if self.kind == "tte" and (len(e) < 2 or e[0] != 0.0 or not increasing):
            raise ValueError(f"HeadSpec({self.task}).edges_days={e}: need 0 = e0 < e1 < ... (at least one "
                             "bin)")
        self.edges_days = e

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (saved as JSON)."""
        return asdict(self)


def hazard_nll(logits: Tensor, duration_days: Tensor, event: Tensor, edges_days: Tensor) -> Tensor:
    """Mean censoring-aware discrete-time NLL.

    logits (b, K) hazard logits; duration_days (b,) >= 0; event (b,) 1 = event, 0 = censored;
    edges_days (K+1,) increasing from 0. Returns a scalar. ``log h = logsigmoid(x)`` and
    ``log(1-h) = logsigmoid(-x)`` keep it stable for large logits.
    """
    k = logits.shape[-1]
    if edges_days.shape[0] != k + 1:
        raise ValueError(f"hazard_nll: {k} hazard logits need {k + 1} edges, got {edges_days.shape[0]}")
    d = duration_days.float()
    e = edges_days.float()
    # an event at d lies in bin j with e_j < d <= e_{j+1} (d = 0 counts in the first bin)
    ev_bin = (torch.searchsorted(e, d, right=False) - 1).clamp(0, k - 1)
    # a censored row completed, alive, every bin with e_{j+1} <= d
    done = torch.searchsorted(e[1:].contiguous(), d, right=True)
    ev = (event > 0) & (d <= e[-1])  # events past the last edge: alive through every bin
    n_alive = torch.where(ev, ev_bin, done)
    survived = torch.arange(k, device=logits.device).unsqueeze(0) < n_alive.unsqueeze(1)  # (b, K)
    ll = (F.logsigmoid(-logits.float()) * survived).sum(1)
    log_h = F.logsigmoid(logits.float()).gather(1, ev_bin.unsqueeze(1)).squeeze(1)
    ll = ll + torch.where(ev, log_h, torch.zeros_like(log_h))
    return -ll.mean()


def survival_curve(logits: Tensor) -> Tensor:
    """Hazard logits (b, K) -> S at the edges (b, K+1), starting with S(0) = 1, non-increasing."""
    s = torch.cumprod(torch.sigmoid(-logits.float()), dim=-1)
    return torch.cat([torch.ones_like(s[:, :1]), s], dim=-1)


class BinaryHead(nn.Module):
    """Pooled state (b, d) -> logit (b,)."""

    def __init__(self, d_model: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(d_model, 1))

    def forward(self, pooled: Tensor) -> Tensor:
        """(b, d) -> (b,)."""
        return cast(Tensor, self.net(pooled).squeeze(-1))


class HazardHead(nn.Module):
    """Pooled state (b, d) -> hazard logits (b, K)."""

    def __init__(self, d_model: int, n_bins: int, dropout: float = 0.1) -> None:
        super().__init__()
        linear = nn.Linear(d_model, n_bins)
        with torch.no_grad():  # start at a small hazard (~5% per bin): survival near 1, as in the data
            linear.bias.fill_(-3.0)
        self.net = nn.Sequential(nn.Dropout(dropout), linear)

    def forward(self, pooled: Tensor) -> Tensor:
        """(b, d) -> (b, K)."""
        return cast(Tensor, self.net(pooled))


class TaskHeads(nn.Module):
    """One head per non-forecast task (``shared_head``: every binary task shares one head — the prompt
    token already tells the backbone which task is asked, as in EHRMamba's MTF)."""

    def __init__(self, specs: list[HeadSpec], d_model: int, shared_head: bool = False,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.specs = {s.task: s for s in specs}
        self.shared_head = shared_head
        self.heads = nn.ModuleDict()
        shared = BinaryHead(d_model, dropout) if shared_head else None
        for s in specs:
            if s.kind == "binary":
                self.heads[s.task] = shared if shared is not None else BinaryHead(d_model, dropout)
            elif s.kind == "tte":
                self.heads[s.task] = HazardHead(d_model, len(s.edges_days) - 1, dropout)
        for s in specs:
            if s.kind == "tte":
                self.register_buffer(f"edges_{s.task}", torch.tensor(s.edges_days), persistent=False)

    def edges(self, task: str) -> Tensor:
        """Bin edges (K+1,) of a tte task."""
        buf = getattr(self, f"edges_{task}")
        assert isinstance(buf, Tensor)
        return buf

    def forward(self, task: str, pooled: Tensor) -> Tensor:
        """Head output of ``task``: (b,) logits for binary, (b, K) hazard logits for tte."""
        if task not in self.heads:
            raise KeyError(f"no head for task {task!r} (heads: {sorted(self.heads)})")
        return self.heads[task](pooled)  # type: ignore[no-any-return]

    def loss(self, task: str, pooled: Tensor, batch: dict[str, Tensor]) -> Tensor:
        """Task loss on rows of one task: BCE (binary) or :func:`hazard_nll` (tte)."""
        out = self(task, pooled)
        kind = self.specs[task].kind
        if kind == "binary":
            return F.binary_cross_entropy_with_logits(out.float(), batch["label"].float())
        return hazard_nll(out, batch["duration_days"], batch["event"], self.edges(task))
