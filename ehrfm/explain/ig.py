"""Integrated gradients (Sundararajan et al., 2017) of a finetuned task head, on the summed input embedding.

What is attributed: the sum of every embedding stream the model adds at a position (concept, token type,
visit order and segment, age, time, gap, value, code count, value delta) — the vector that enters the
embedding LayerNorm, ``e`` (b, l, d). One attribution per position: ``(e - e') . mean_k grad f(e' +
a_k (e - e'))`` summed over the width, so the attributions of a row add up to ``f(x) - f(baseline)``
(completeness) up to the quadrature error, which is measured for every row and returned.

What is explained, ``f``: the RAW head output, before any post-hoc calibration (calibration is a monotone
map applied after the head, :mod:`ehrfm.train.calibration`): the logit for a binary task; for a
time-to-event task the logit of the risk by the last horizon, ``log(1 - S) - log S`` with ``S`` the
survival at the last edge. Forecasting has no scalar output and is refused.

Baseline ``e'``: the row as the collator pads it — every explained position replaced by ``[PAD]`` with
type 0, visit 0, age 0, time 0 and no value — run through the same embedding; the task prompt tokens and
the padding keep their real embedding (``e' = e`` there), so they are fixed and get exactly zero. (The
trailing prompt token's embedding includes the gap from the last event to the prediction time: held fixed,
that gap is not attributed.)

Quadrature: Clenshaw-Curtis (default; nested, so refinement reuses every node already computed),
Gauss-Legendre or midpoint nodes on [0, 1], batched over interpolation points up to ``batch_tokens`` tokens
per pass (on the CPU at most :data:`CPU_PASS_TOKENS`). The row and its baseline go
through one stacked forward for ``f(x)`` and ``f(baseline)``, and the model's parameters are frozen while
gradients are taken (:func:`parameters_frozen`): only the embedding's gradient is built. Rows whose
completeness error exceeds ``tolerance`` are recomputed with twice the points until ``max_steps``; what
remains is reported (``converged`` False), never hidden.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

from ehrfm.config.explain import IGSettings
from ehrfm.data.dataset import LIST_COLUMNS
from ehrfm.models import EHRFoundationModel, pool
from ehrfm.schema import TokenType
from ehrfm.train.heads import HeadSpec, TaskHeads

ABS_FLOOR = 1e-3
"""Denominator floor of the relative completeness error (in logit units): a row whose output barely moves
from the baseline is judged on the absolute error instead of a ratio of two tiny numbers."""
TARGETS = {"binary": "logit", "tte": "risk_logit"}
CPU_PASS_TOKENS = 2048
"""On the CPU, interpolation points go through the model at most this many tokens (rows x points x width)
per forward/backward pass, whatever ``batch_tokens`` allows: the chunked scan's intermediates of a wider
pass outgrow the cache (one 504-token row, 8 points, one thread: 4 points per pass ~100 ms, all 8 in one
pass ~135 ms, 2 per pass ~105 ms). Accelerators take ``batch_tokens`` as it is."""


@dataclass
class Attributions:
    """Integrated gradients of one batch of rows.

    ``tokens`` (b, l) float64: one attribution per position (0 at prompt tokens and padding); ``f_input`` /
    ``f_baseline`` (b,): the explained output at the row and at the baseline; ``rel_error`` (b,): the
    completeness error ``|sum(tokens) - (f_input - f_baseline)| / max(|f_input - f_baseline|, 1e-3)``;
    ``converged`` (b,) whether it is within the tolerance; ``steps`` (b,): interpolation points used.
    """

    tokens: np.ndarray
    f_input: np.ndarray
    f_baseline: np.ndarray
    rel_error: np.ndarray
    converged: np.ndarray
    steps: np.ndarray
    target: str
    """What was attributed: ``logit`` (binary) or ``risk_logit`` (time-to-event)."""


def quadrature(n: int, method: str = "gauss") -> tuple[np.ndarray, np.ndarray]:
    """Nodes in [0, 1] and their weights (summing to 1): ``n`` Gauss-Legendre nodes or midpoints, or the
    ``n + 1`` Clenshaw-Curtis nodes ``(1 - cos(k pi / n)) / 2``, k = 0..n (both ends included). Clenshaw-
    Curtis rules are nested: the nodes of ``n`` are among those of ``2 n``, so refining reuses them."""
    if n < 1:
        raise ValueError(f"quadrature: n={n} must be >= 1")
    if method == "gauss":
        x, w = np.polynomial.legendre.leggauss(n)
        return (x + 1.0) / 2.0, w / 2.0
    if method == "riemann":
        return (np.arange(n) + 0.5) / n, np.full(n, 1.0 / n)
    if method == "clenshaw_curtis":
        k = np.arange(n + 1)
        j = np.arange(1, n // 2 + 1)
        b = np.where(2 * j == n, 1.0, 2.0)
        # w_k = c_k / n (1 - sum_j b_j cos(2 j k pi / n) / (4 j^2 - 1)), c_k = 1 at the ends, 2 inside
        s = (b / (4.0 * j**2 - 1.0) * np.cos(2.0 * np.outer(k, j) * np.pi / n)).sum(1)
        w = np.where((k == 0) | (k == n), 1.0, 2.0) / n * (1.0 - s)
        return (1.0 - np.cos(k * np.pi / n)) / 2.0, w / 2.0
    raise ValueError(f"quadrature: method={method!r}; expected gauss, clenshaw_curtis or riemann")


def scalar_output(spec: HeadSpec, heads: TaskHeads, hidden: Tensor, lengths: Tensor) -> Tensor:
    """The explained output of ``spec.task`` (b,) from hidden states (b, l, d): see the module docstring."""
    pooled = pool(hidden, lengths)
    if spec.kind == "binary":
        return cast(Tensor, heads(spec.task, pooled)).float()
    if spec.kind == "tte":
        hazard_logits = cast(Tensor, heads(spec.task, pooled)).float()
        log_s = torch.nn.functional.logsigmoid(-hazard_logits).sum(-1)  # log S at the last edge
        return torch.log((-torch.expm1(log_s)).clamp(min=1e-12)) - log_s
    raise ValueError(f"task {spec.task!r} (kind {spec.kind}): only binary and time-to-event outputs can be "
                     "attributed (forecasting has no scalar output)")


def fixed_positions(batch: dict[str, Tensor]) -> Tensor:
    """(b, l) bool: positions that are not explained (task prompt tokens and padding)."""
    width = batch["concept_ids"].shape[1]
    pad = torch.arange(width, device=batch["lengths"].device)[None, :] >= batch["lengths"][:, None]
    return pad | (batch["type_ids"] == TokenType.TASK)


def baseline_streams(batch: dict[str, Tensor], pad_id: int) -> dict[str, Tensor]:
    """The streams of the baseline row: explained positions as the collator pads (see module docstring)."""
    keep = fixed_positions(batch)
    out = {}
    for name in LIST_COLUMNS:
        fill = pad_id if name == "concept_ids" else (float("nan") if name == "values" else 0)
        out[name] = torch.where(keep, batch[name], torch.full_like(batch[name], fill))
    return out


@dataclass
class _Tap:
    """What the embedding LayerNorm of ``module`` does for the thread that set it: record its input in
    ``seen`` and, when ``replace`` is given, receive ``replace`` instead."""

    module: torch.nn.Module
    replace: Tensor | None
    seen: list[Tensor]


_TAPS = threading.local()  # per thread: a served model may be predicting in other threads meanwhile


def _tap_hook(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
    tap = getattr(_TAPS, "tap", None)
    if tap is None or tap.module is not module:
        return None  # every other forward pass, in this thread or another, is untouched
    tap.seen.append(args[0])
    return (tap.replace,) if tap.replace is not None else None


@contextmanager
def _norm_input(model: EHRFoundationModel, replace: Tensor | None, seen: list[Tensor]) -> Iterator[None]:
    """While active, in this thread only, the embedding LayerNorm records its input in ``seen`` and, when
    ``replace`` is given, receives ``replace`` instead (the rest of the forward pass is the model's own). The
    hook is registered once per model and does nothing outside such a block."""
    norm = model.embeddings.norm
    if not getattr(norm, "_ehrfm_tap", False):
        norm.register_forward_pre_hook(_tap_hook)
        norm._ehrfm_tap = True  # type: ignore[assignment]
    previous = getattr(_TAPS, "tap", None)
    _TAPS.tap = _Tap(norm, replace, seen)
    try:
        yield
    finally:
        _TAPS.tap = previous


_FROZEN_LOCK = threading.Lock()
_FROZEN: dict[int, tuple[int, list[tuple[torch.nn.Parameter, bool]]]] = {}  # id(module) -> (blocks in, saved)


@contextmanager
def parameters_frozen(*modules: torch.nn.Module) -> Iterator[None]:
    """While active, the parameters of ``modules`` do not require grad, so a forward pass records nothing
    for parameter gradients and the backward pass computes none: integrated gradients need the gradient
    with respect to the embedding only (measured ~15% of the path-gradient time of a 500-token row on one
    CPU thread). Safe across threads explaining with the same model: the first block in records the
    parameters' ``requires_grad`` and clears it, the last block out restores it. Not for modules that are
    being trained meanwhile (their parameters would get no gradient)."""
    for m in modules:
        with _FROZEN_LOCK:
            count, saved = _FROZEN.get(id(m), (0, []))
            if count == 0:
                saved = [(q, q.requires_grad) for q in m.parameters()]
                for q, _ in saved:
                    q.requires_grad_(False)
            _FROZEN[id(m)] = (count + 1, saved)
    try:
        yield
    finally:
        for m in reversed(modules):  # reverse order: a parameter shared by two modules gets its own flag back
            with _FROZEN_LOCK:
                count, saved = _FROZEN[id(m)]
                if count == 1:
                    del _FROZEN[id(m)]
                    for q, flag in saved:
                        q.requires_grad_(flag)
                else:
                    _FROZEN[id(m)] = (count - 1, saved)


def _streams(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: batch[k] for k in LIST_COLUMNS}


@torch.no_grad()
def embedding_sum(model: EHRFoundationModel, streams: dict[str, Tensor]) -> Tensor:
    """The summed input embedding ``e`` (b, l, d) of token streams (what enters the embedding LayerNorm)."""
    seen: list[Tensor] = []
    with _norm_input(model, None, seen):
        model.embeddings(**streams)
    return seen[0].detach().float()


class IntegratedGradients:
    """Integrated gradients of one task of a finetuned model (backbone + heads in eval mode).

    ``explain(batch)`` takes a collated batch of that task's rows (:class:`ehrfm.data.multitask.
    MultiTaskCollator`) and returns :class:`Attributions`.
    """

    def __init__(self, model: EHRFoundationModel, heads: TaskHeads, spec: HeadSpec,
                 settings: IGSettings | None = None) -> None:
        if spec.kind not in TARGETS:
            raise ValueError(f"task {spec.task!r} (kind {spec.kind}): only binary and time-to-event outputs "
                             "can be attributed (forecasting has no scalar output)")
        self.model, self.heads, self.spec = model.eval(), heads.eval(), spec
        self.settings = settings or IGSettings()

    def output(self, streams: dict[str, Tensor], lengths: Tensor, e: Tensor | None = None) -> Tensor:
        """``f`` (b,) of rows given by their streams, or of the summed embeddings ``e`` (b, l, d) in their
        place (streams then only shape the batch)."""
        with _norm_input(self.model, e, []):
            hidden = self.model(**streams, return_logits=False).hidden
        return scalar_output(self.spec, self.heads, hidden, lengths)

    def _node_contributions(self, batch: dict[str, Tensor], x: Tensor, base: Tensor,
                            alphas: np.ndarray) -> np.ndarray:
        """(k, b, l) float64: ``(x - base) . grad f(base + a_k (x - base))`` per node and position,
        batched over nodes within ``batch_tokens`` (the quadrature weights are applied by the caller, so
        the nodes of a nested rule are computed once)."""
        b, width = x.shape[:2]
        budget = self.settings.batch_tokens
        if x.device.type == "cpu":
            budget = min(budget, CPU_PASS_TOKENS)
        per_pass = max(1, budget // max(width * b, 1))
        out = np.zeros((len(alphas), b, width))
        streams = _streams(batch)
        delta = x - base
        for s in range(0, len(alphas), per_pass):
            a = torch.tensor(alphas[s : s + per_pass], dtype=x.dtype, device=x.device)
            k = len(a)
            e = (base[None] + a[:, None, None, None] * delta[None]).reshape(k * b, width, -1)
            e.requires_grad_(True)
            rep = {n: t.repeat(k, 1) for n, t in streams.items()}
            with torch.enable_grad():
                f = self.output(rep, batch["lengths"].repeat(k), e)
                (grad,) = torch.autograd.grad(f.sum(), e)
            dots = (grad.reshape(k, b, width, -1).double() * delta.double()[None]).sum(-1)
            out[s : s + k] = dots.cpu().numpy()
        return out

    def explain(self, batch: dict[str, Tensor]) -> Attributions:
        """Attributions of every row of a collated batch (see :class:`Attributions`)."""
        with parameters_frozen(self.model, self.heads):
            return self._explain(batch)

    def _explain(self, batch: dict[str, Tensor]) -> Attributions:
        cfg = self.settings
        streams = _streams(batch)
        b = batch["lengths"].shape[0]
        # the row and its baseline as one stacked batch: one embedding pass and one forward for both ends
        # (rows are independent in eval mode; on one CPU thread a 2-row pass costs less than two 1-row ones)
        pads = baseline_streams(batch, self.model.config.pad_id)
        both = {k: torch.cat([v, pads[k]]) for k, v in streams.items()}
        e_both = embedding_sum(self.model, both)
        x, base = e_both[:b], e_both[b:]
        fixed = fixed_positions(batch)
        base = torch.where(fixed[..., None], x, base)  # prompt tokens and padding: not explained
        with torch.no_grad():
            ends = self.output({k: v.repeat(2, 1) for k, v in streams.items()}, batch["lengths"].repeat(2),
                               torch.cat([x, base])).double().cpu().numpy()
        f_x, f_b = ends[:b], ends[b:]
        tokens = np.zeros(tuple(x.shape[:2]))
        rel = np.full(b, np.inf)
        steps = np.zeros(b, dtype=np.int64)
        fixed_np = fixed.cpu().numpy()
        # node -> (b, l) contributions of the rows computed there; the rows still to refine are always a
        # subset of those computed at every earlier node, so a nested rule's old nodes are reused
        seen: dict[float, np.ndarray] = {}
        todo = np.arange(b)
        n = cfg.steps
        while len(todo):
            alphas, weights = quadrature(n, cfg.method)
            keys = [round(float(a), 12) for a in alphas]
            new = [i for i, key in enumerate(keys) if key not in seen]
            if new:
                idx = torch.as_tensor(todo)
                sub = {k: v[idx] for k, v in batch.items() if isinstance(v, Tensor) and v.shape[:1] == (b,)}
                contrib = self._node_contributions(sub, x[idx], base[idx], alphas[new])
                for j, i in enumerate(new):
                    seen[keys[i]] = np.zeros(tokens.shape)
                    seen[keys[i]][todo] = contrib[j]
            att = np.tensordot(weights, np.stack([seen[key][todo] for key in keys]), axes=1)  # (t, l)
            tokens[todo] = np.where(fixed_np[todo], 0.0, att)
            steps[todo] = len(alphas)
            diff = f_x[todo] - f_b[todo]
            rel[todo] = np.abs(tokens[todo].sum(1) - diff) / np.maximum(np.abs(diff), ABS_FLOOR)
            if n >= cfg.max_steps:
                break
            todo = todo[rel[todo] > cfg.tolerance]
            n = min(2 * n, cfg.max_steps)
        return Attributions(tokens, f_x, f_b, rel, rel <= cfg.tolerance, steps, TARGETS[self.spec.kind])
