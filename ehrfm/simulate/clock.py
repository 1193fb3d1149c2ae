"""The simulated clock, and the stream values of generated tokens, as the tokenizer encodes them.

The tokenizer (:mod:`ehrfm.tokenize.tokenizer`) writes time in two places:

* **between visits**, one interval token for the gap from the previous visit's last event to the next
  visit's first event: ``[W{d//7}]`` under 28 days, ``[M{min(12, d//30)}]`` under 365 days, else ``[LT]``.
  A generated interval token advances the clock by a gap drawn uniformly from its range
  (:func:`interval_ranges`; ``[LT]``: 365-730 days, past every packaged horizon). ``[VS]``, the visit's first
  code, value-bin tokens, ``[VE]`` and ``[REG]`` sit at the time of an event already on the clock: they
  advance it by 0.
* **inside a visit**, only in the ``times`` stream, which the model reads but does not generate. No token says
  how long a stay lasts, so the simulation needs a model of it: :class:`StreamTables` holds, fitted on the
  train split's pretraining rows, the empirical distribution (``n_quantiles`` quantiles) of the gap between a
  code token and the token before it, per (visit class, code). The visit class is that of the last
  ``ENCOUNTER//<class>//START`` code seen so far in the visit (0 before one), the same causal reading at fit
  and at generation time; keys seen fewer than ``min_count`` times back off to the code over all classes, then
  to the class over all codes, then to every code. A generated code advances the clock by a draw from its
  key's quantiles.

Every generated event lies after prediction time (the prefix holds all events up to it), so while the clock
is still at or before prediction time (the first event after an open visit's last one) a draw is conditioned
on landing after it: the quantiles above the missing time for a code, the part of the range above it for an
interval token (prediction time itself when nothing is above).

:class:`StreamTables` also holds the mean scaled value on each (code, value-bin) pair, which a generated
value-bin token carries in the ``values`` stream (the model was trained with a value on every bin token).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ehrfm.schema import INTERVAL_TOKENS, TokenType
from ehrfm.vocab import Vocabulary

LT_RANGE = (365.0, 730.0)
"""Gap range (days) drawn for ``[LT]`` ("a year or more"); every packaged horizon is at most 365 days."""
_ENCOUNTER_START = re.compile(r"^ENCOUNTER//([^/]+)//START$")
_BIN_TOKEN = re.compile(r"^\[Q(\d+)\]$")


def interval_ranges() -> dict[str, tuple[float, float]]:
    """Gap range ``[low, high)`` in days of every interval token (the inverse of the tokenizer's
    ``interval_token``; a test checks the two agree)."""
    out = {f"[W{i}]": (7.0 * i, 7.0 * i + 7.0) for i in range(4)}
    out["[M0]"] = (28.0, 30.0)  # 28-29 days: days // 30 == 0
    out |= {f"[M{i}]": (30.0 * i, 30.0 * i + 30.0) for i in range(1, 12)}
    out["[M12]"] = (360.0, 365.0)
    out["[LT]"] = LT_RANGE
    assert set(out) == set(INTERVAL_TOKENS)
    return out


def interval_table(vocab: Vocabulary) -> Tensor:
    """(V, 2) float64 gap range of each token; NaN rows for tokens that are not interval tokens."""
    table = torch.full((len(vocab), 2), float("nan"), dtype=torch.float64)
    for tok, (lo, hi) in interval_ranges().items():
        if tok in vocab:
            table[vocab.id(tok)] = torch.tensor([lo, hi], dtype=torch.float64)
    return table


def visit_classes(vocab: Vocabulary) -> tuple[Tensor, list[str]]:
    """(V,) long: the visit class each token opens (1.. for ``ENCOUNTER//<class>//START`` codes, 0 for every
    other token), and the class names (index 0 = "none")."""
    names = ["none"]
    cls = torch.zeros(len(vocab), dtype=torch.long)
    for i, tok in enumerate(vocab.tokens):
        m = _ENCOUNTER_START.match(tok)
        if m:
            if m.group(1) not in names:
                names.append(m.group(1))
            cls[i] = names.index(m.group(1))
    return cls, names


def bin_index(vocab: Vocabulary) -> Tensor:
    """(V,) long: ``b`` for the value-bin token ``[Q{b}]``, -1 for every other token."""
    out = torch.full((len(vocab),), -1, dtype=torch.long)
    for i, tok in enumerate(vocab.tokens):
        m = _BIN_TOKEN.match(tok)
        if m:
            out[i] = int(m.group(1))
    return out


@dataclass
class StreamTables:
    """Within-visit gaps and value-bin values fitted on training rows (see the module docstring)."""

    gap_quantiles: Tensor
    """(n_classes, V, Q) float32: quantiles of the gap (days) before a code token, per (visit class, code)."""
    bin_values: Tensor
    """(V, n_bins) float32: mean scaled value on a value-bin token, per (code before it, bin); NaN unseen."""
    classes: list[str]
    """Visit class names (index 0 = none)."""
    fitted_tokens: int
    """Code-token gaps the table was fitted on."""

    @classmethod
    def fit(cls, rows: Iterable[dict[str, np.ndarray]], vocab: Vocabulary, n_quantiles: int = 16,
            min_count: int = 20) -> StreamTables:
        """Fit on token rows (dicts with ``concept_ids``, ``type_ids``, ``times``, ``values`` arrays)."""
        cls_of, names = visit_classes(vocab)
        bins = bin_index(vocab)
        n_bins = int(bins.max()) + 1 if bool((bins >= 0).any()) else 1
        keys: list[np.ndarray] = []
        gaps: list[np.ndarray] = []
        vkeys: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        for row in rows:
            k, g, vk, v = _row_samples(row, cls_of.numpy(), bins.numpy())
            keys.append(k)
            gaps.append(g)
            vkeys.append(vk)
            vals.append(v)
        key = np.concatenate(keys) if keys else np.zeros((0, 2), dtype=np.int64)
        gap = np.concatenate(gaps) if gaps else np.zeros(0)
        table = _gap_table(key, gap, len(names), len(vocab), n_quantiles, min_count)
        vk = np.concatenate(vkeys) if vkeys else np.zeros((0, 2), dtype=np.int64)
        bv = np.full((len(vocab), n_bins), np.nan, dtype=np.float32)
        if len(vk):
            means = pd.DataFrame({"c": vk[:, 0], "b": vk[:, 1], "v": np.concatenate(vals)}).groupby(
                ["c", "b"])["v"].mean()
            idx = np.asarray(means.index.to_list(), dtype=np.int64)
            bv[idx[:, 0], idx[:, 1]] = means.to_numpy(dtype=np.float32)
        return cls(torch.from_numpy(table), torch.from_numpy(bv), names, int(len(gap)))

    def to(self, device: torch.device | str) -> StreamTables:
        """The same tables on ``device``."""
        return StreamTables(self.gap_quantiles.to(device), self.bin_values.to(device), self.classes,
                            self.fitted_tokens)

    def sample_gap(self, visit_class: Tensor, concept: Tensor, generator: torch.Generator | None,
                   above: Tensor | None = None) -> Tensor:
        """One gap draw (b,) float64 days for code tokens ``concept`` (b,) in visits of ``visit_class``.

        ``above`` (b,) float64: draw from the quantiles strictly above it (the distribution conditioned on
        gap > above), or return ``above`` itself when none is; None: unconditioned.
        """
        qs = self.gap_quantiles[visit_class, concept].double()  # (b, Q), ascending
        q = qs.shape[-1]
        u = torch.rand(concept.shape, generator=generator, device=concept.device, dtype=torch.float64)
        if above is None:
            return qs.gather(1, (u * q).long().clamp(max=q - 1).unsqueeze(1)).squeeze(1)
        n_ok = q - torch.searchsorted(qs, above.unsqueeze(1), right=True).squeeze(1)  # quantiles > above
        pick = (q - 1 - (u * n_ok).long()).clamp(min=0, max=q - 1)  # uniform over the top n_ok
        gap = qs.gather(1, pick.unsqueeze(1)).squeeze(1)
        return torch.where(n_ok > 0, gap, above)

    def bin_value(self, prev_concept: Tensor, bin_of_token: Tensor) -> Tensor:
        """Value (b,) carried by generated tokens: the mean for (``prev_concept``, bin) on value-bin tokens
        (``bin_of_token`` >= 0), NaN elsewhere."""
        b = bin_of_token.clamp(min=0, max=self.bin_values.shape[1] - 1)
        v = self.bin_values[prev_concept, b]
        return torch.where(bin_of_token >= 0, v, torch.full_like(v, float("nan")))


def _row_samples(row: dict[str, np.ndarray], cls_of: np.ndarray, bins: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gap samples ((class, code) keys (n, 2), gaps (n,)) and value samples ((code, bin) keys, values) of one
    row, read causally as the generator will."""
    c = np.asarray(row["concept_ids"], dtype=np.int64)
    t = np.asarray(row["type_ids"], dtype=np.int64)
    times = np.asarray(row["times"], dtype=np.float64)
    n = len(c)
    pos = np.arange(n)
    # the class known before token i: the last visit start or START code strictly before it
    marker = (t == TokenType.VISIT_START) | (cls_of[c] > 0)
    marker_cls = np.where(t == TokenType.VISIT_START, 0, cls_of[c])
    last = np.maximum.accumulate(np.where(marker, pos, -1))
    before = np.concatenate([[-1], last[:-1]]) if n else last
    cls_before = np.where(before >= 0, marker_cls[np.maximum(before, 0)], 0)
    prev_t = np.concatenate([[TokenType.PAD], t[:-1]]) if n else t
    take = (t == TokenType.CODE) & (prev_t != TokenType.VISIT_START) & (pos > 0)
    gap = np.clip(times - np.concatenate([times[:1], times[:-1]]), 0.0, None)
    keys = np.stack([cls_before[take], c[take]], axis=1)
    vals = np.asarray(row["values"], dtype=np.float64) if "values" in row else np.full(n, np.nan)
    on_bin = (bins[c] >= 0) & np.isfinite(vals) & (pos > 0)
    prev_c = np.concatenate([[0], c[:-1]]) if n else c
    vkeys = np.stack([prev_c[on_bin], bins[c][on_bin]], axis=1)
    return keys, gap[take], vkeys, vals[on_bin]


def _gap_table(key: np.ndarray, gap: np.ndarray, n_classes: int, n_tokens: int, q: int,
               min_count: int) -> np.ndarray:
    """(n_classes, V, q) quantile table with the back-off of the module docstring."""
    levels = (np.arange(q) + 0.5) / q
    table = np.zeros((n_classes, n_tokens, q), dtype=np.float32)
    if not len(gap):
        return table
    table[:] = np.quantile(gap, levels)  # every code
    for k, qs in _grouped_quantiles(key[:, 0], gap, levels, min_count):  # the class over all codes
        table[k] = qs
    for c, qs in _grouped_quantiles(key[:, 1], gap, levels, min_count):  # the code over all classes
        table[:, c] = qs
    for kc, qs in _grouped_quantiles(key[:, 0] * n_tokens + key[:, 1], gap, levels, min_count):  # the pair
        table[kc // n_tokens, kc % n_tokens] = qs
    return table


def _grouped_quantiles(keys: np.ndarray, values: np.ndarray, levels: np.ndarray, min_count: int
                       ) -> list[tuple[int, np.ndarray]]:
    """(key, quantiles of its values) for every key seen at least ``min_count`` times."""
    order = np.argsort(keys, kind="stable")
    k, v = keys[order], values[order]
    uniq, start, count = np.unique(k, return_index=True, return_counts=True)
    return [(int(u), np.quantile(v[s : s + c], levels)) for u, s, c in zip(uniq, start, count, strict=True)
            if c >= min_count]
