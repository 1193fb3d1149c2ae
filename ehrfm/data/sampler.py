"""Length-bucketed token-budget batching.

A batch holds as many sequences as fit ``max_tokens`` *after padding* (batch size x padded length), so
short timelines travel in big batches and long ones in small ones. Sequences are bucketed by length:
each epoch shuffles (seeded by ``(seed, epoch)``), cuts the permutation into pools, sorts each pool by
length and packs it greedily, then shuffles the batch order. Same seed + epoch -> same batches.

:class:`TokenBudgetBatchSampler` is one pass (validation, or training with Lightning epochs);
:class:`StreamingBatchSampler` chains passes into one resumable stream of micro-batches that starts at
any position (``start``) — what exact resume after a kill needs.

A row whose padded length alone exceeds ``max_tokens`` is an error by default (a budget that small is
usually a mistake); with ``long_rows="alone"`` it gets a batch of its own instead, so whole-history rows
(16k tokens) train under a budget sized for the typical row. The packing is the same either way: a pool
is sorted by length, so an oversized row always closes the batch before it and the one after it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ehrfm.data.collate import padded_length


class TokenBudgetBatchSampler:
    """Batches of dataset indices whose padded size stays within ``max_tokens``.

    ``lengths``: tokens per row. ``max_len``: truncation length used by the collator (counted as such).
    ``pool_size``: rows sorted together (bigger = tighter padding, less randomness). With
    ``world_size > 1`` rank ``r`` gets batches ``r, r+world, ...`` of an equal-length prefix, so every rank
    takes the same number of steps. ``long_rows``: ``"error"`` (a row longer than the budget raises) or
    ``"alone"`` (it is a batch by itself).
    """

    def __init__(self, lengths: Sequence[int] | np.ndarray, max_tokens: int, seed: int = 0,
                 shuffle: bool = True,
                 max_len: int | None = None, pad_to_multiple: int = 8, pool_size: int = 1024,
                 rank: int = 0, world_size: int = 1, long_rows: str = "error") -> None:
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.padded = np.array([padded_length(int(n), pad_to_multiple, max_len) for n in self.lengths])
        if long_rows not in ("error", "alone"):
            raise ValueError(f"long_rows={long_rows!r} must be 'error' or 'alone'")
        if long_rows == "error" and len(self.lengths) and max_tokens < int(self.padded.max()):
            raise ValueError(f"max_tokens={max_tokens} is smaller than one padded sequence "
                             f"({int(self.padded.max())} tokens): raise max_tokens, lower max_len or "
                             "set data.long_rows=alone")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} must be in [0, world_size={world_size})")
        self.max_tokens, self.seed, self.shuffle = max_tokens, seed, shuffle
        self.pool_size, self.rank, self.world_size = pool_size, rank, world_size
        self.epoch = 0
        self._skip = 0  # batches of the current epoch already consumed (resume)

    def plan(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` for this rank, in order."""
        n = len(self.lengths)
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        batches: list[list[int]] = []
        for start in range(0, n, self.pool_size):
            pool = order[start : start + self.pool_size]
            pool = pool[np.argsort(self.padded[pool], kind="stable")]
            batch: list[int] = []
            width = 0
            for idx in pool.tolist():
                w = max(width, int(self.padded[idx]))
                if batch and w * (len(batch) + 1) > self.max_tokens:
                    batches.append(batch)
                    batch, w = [], int(self.padded[idx])
                batch.append(idx)
                width = w
            if batch:
                batches.append(batch)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        per_rank = len(batches) // self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank : per_rank * self.world_size : self.world_size]

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next ``__iter__`` yields (Lightning calls this)."""
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """Position to resume from: epoch and batches already consumed in it."""
        return {"epoch": self.epoch, "skip": self._skip}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume: the next ``__iter__`` starts ``skip`` batches into ``epoch``."""
        self.epoch, self._skip = int(state["epoch"]), int(state["skip"])

    def __iter__(self) -> Iterator[list[int]]:
        skip, self._skip = self._skip, 0
        yield from self.plan(self.epoch)[skip:]

    def __len__(self) -> int:
        return len(self.plan(self.epoch))


class StreamingBatchSampler:
    """An endless-looking stream of ``total`` micro-batches over successive epochs of ``base``,
    starting at micro-batch ``start`` (the number already consumed by a run being resumed)."""

    def __init__(self, base: TokenBudgetBatchSampler, total: int, start: int = 0) -> None:
        if not 0 <= start <= total:
            raise ValueError(f"start={start} must be in [0, total={total}]")
        self.base, self.total, self.start = base, total, start

    def __iter__(self) -> Iterator[list[int]]:
        position, epoch = 0, 0
        while position < self.total:
            plan = self.base.plan(epoch)
            if not plan:
                raise ValueError("the training split yields no batches (empty dataset?)")
            if position + len(plan) <= self.start:  # whole epoch already consumed: skip without yielding
                position += len(plan)
                epoch += 1
                continue
            for batch in plan:
                if position >= self.total:
                    return
                if position >= self.start:
                    yield batch
                position += 1
            epoch += 1

    def __len__(self) -> int:
        # The full length, not ``total - start``: Lightning restores its own batch counter to ``start`` on
        # resume and compares it against this length.
        return self.total
