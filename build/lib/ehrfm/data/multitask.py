"""Multitask prompted finetuning (MTF) data: several tasks' rows behind one index, their collation and a
task-balanced, length-bucketed micro-batch sampler.

Torch and numpy only (no Lightning, no Spark): the serving path collates task rows with
:class:`MultiTaskCollator` and must stay importable without the training stack.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ehrfm.data.collate import Collator, padded_length
from ehrfm.data.dataset import TokenStreamDataset


class MultiTaskDataset(Dataset[dict[str, Any]]):
    """Rows of several tasks' :class:`TokenStreamDataset` (optionally a subset of each, e.g. few-shot),
    addressed by one global index; items carry ``task_idx``."""

    def __init__(self, tasks: Sequence[str], datasets: Sequence[TokenStreamDataset],
                 subsets: Sequence[np.ndarray] | None = None) -> None:
        self.tasks, self.datasets = list(tasks), list(datasets)
        self.rows = [np.asarray(s, dtype=np.int64) for s in subsets] if subsets is not None else [
            np.arange(len(d), dtype=np.int64) for d in datasets]
        self.offsets = np.concatenate([[0], np.cumsum([len(r) for r in self.rows])]).astype(np.int64)
        self.lengths = np.concatenate([d.lengths[r] for d, r in zip(self.datasets, self.rows, strict=True)]
                                      or [np.zeros(0, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, i: int) -> tuple[int, int]:
        """Global index -> (task index, row index in that task's dataset)."""
        t = int(np.searchsorted(self.offsets, i, side="right") - 1)
        return t, int(self.rows[t][i - self.offsets[t]])

    def __getitem__(self, i: int) -> dict[str, Any]:
        t, j = self.locate(i)
        item = self.datasets[t][j]
        item["task_idx"] = t
        return item


class MultiTaskCollator:
    """:class:`Collator` plus ``task_idx`` (b,) and ``target_ids`` (b, T) padded with -1 (forecast rows)."""

    def __init__(self, max_len: int | None) -> None:
        self.base = Collator(max_len=max_len)

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        """Collate dataset items."""
        out = self.base(items)
        out["task_idx"] = torch.tensor([int(it["task_idx"]) for it in items], dtype=torch.long)
        targets = [list(it.get("target_ids") or []) for it in items]
        width = max([len(t) for t in targets] + [1])
        tgt = torch.full((len(items), width), -1, dtype=torch.long)
        for r, t in enumerate(targets):
            if t:
                tgt[r, : len(t)] = torch.tensor(t, dtype=torch.long)
        out["target_ids"] = tgt
        return out


class TaskBalancedSampler:
    """``total`` micro-batches from ``start``, task-balanced and length-bucketed.

    Rows come in pools of ``pool_rows``: each row's task ~ ``weights``, then a uniform row of that task;
    a pool is sorted by length and packed greedily (``rows x padded width <= max_tokens``, at least one
    row), and its batches are shuffled. Bucketing matters on a CPU: unsorted random rows waste ~45% of
    each batch on padding (task rows are ~250 tokens at the median, ~500 at p90). Pool ``m`` is a pure
    function of ``(seed, m)``, so batch ``n`` is too (exact resume without sampler state).
    """

    def __init__(self, data: MultiTaskDataset, weights: Sequence[float], max_tokens: int, max_len: int,
                 seed: int, total: int, start: int = 0, pool_rows: int = 256) -> None:
        w = np.asarray(weights, dtype=float) * np.array([len(r) > 0 for r in data.rows])
        if w.sum() <= 0:
            raise ValueError("task-balanced sampler: no task has training rows")
        if pool_rows < 1:
            raise ValueError(f"task-balanced sampler: pool_rows={pool_rows} must be >= 1")
        self.p = w / w.sum()
        self.task_rows = np.array([len(r) for r in data.rows], dtype=np.int64)  # rows per task, fixed
        self.data, self.max_tokens, self.max_len = data, max_tokens, max_len
        self.seed, self.total, self.start, self.pool_rows = seed, total, start, pool_rows
        self._pools: list[list[list[int]]] = []  # pools built so far, in order
        self._first: list[int] = []  # index of each pool's first batch

    def _pool(self, m: int) -> list[list[int]]:
        """Batches of pool ``m`` (global row indices), in their shuffled order."""
        rng = np.random.default_rng([self.seed, m])
        tasks = rng.choice(len(self.p), size=self.pool_rows, p=self.p)
        sizes = self.task_rows[tasks]
        picked = (rng.random(self.pool_rows) * sizes).astype(np.int64)  # a uniform row of each drawn task
        rows = (self.data.offsets[tasks] + picked).astype(np.int64)
        widths = np.array([padded_length(int(n), 8, self.max_len) for n in self.data.lengths[rows]])
        order = np.argsort(widths, kind="stable")
        batches: list[list[int]] = []
        batch: list[int] = []
        for i in order.tolist():  # ascending widths: the newest row sets the batch width
            if batch and int(widths[i]) * (len(batch) + 1) > self.max_tokens:
                batches.append(batch)
                batch = []
            batch.append(int(rows[i]))
        batches.append(batch)
        return [batches[j] for j in rng.permutation(len(batches))]

    def batch(self, n: int) -> list[int]:
        """Global indices of micro-batch ``n`` (deterministic in ``(seed, n)``)."""
        while not self._first or self._first[-1] + len(self._pools[-1]) <= n:
            self._first.append(self._first[-1] + len(self._pools[-1]) if self._first else 0)
            self._pools.append(self._pool(len(self._pools)))
        m = int(np.searchsorted(self._first, n, side="right") - 1)
        return self._pools[m][n - self._first[m]]

    def __iter__(self) -> Iterator[list[int]]:
        for n in range(self.start, self.total):
            yield self.batch(n)

    def __len__(self) -> int:
        return self.total  # full length: Lightning restores its own counter on resume (ehrfm.train.base)
