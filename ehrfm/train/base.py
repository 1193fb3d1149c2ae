"""The shared training loop pieces (pretraining and finetuning subclass :class:`StreamingModule`):

- AdamW with no weight decay on norms, biases, embeddings and SSM parameters (A, D, dt bias);
- linear warmup then cosine decay, stepped per optimizer step;
- token-budget batches as one resumable stream (``StreamingBatchSampler``): the number of micro-batches
  consumed and every RNG state are saved in each checkpoint, so a resumed run sees exactly the batches
  and dropout masks an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ehrfm.config.train import DataConfig, OptimConfig
from ehrfm.data import Collator, StreamingBatchSampler, TokenBudgetBatchSampler, TokenStreamDataset


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: matrices of Linear/Conv layers decay; norms, biases, embeddings and parameters
    flagged ``_no_weight_decay`` do not. Tied parameters appear once."""
    no_decay_ids: set[int] = set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            is_matrix = isinstance(module, nn.Linear | nn.Conv1d) and name == "weight"
            if not is_matrix or getattr(p, "_no_weight_decay", False):
                no_decay_ids.add(id(p))
    # an embedding tied to the LM head is registered under both modules: embedding wins (no decay)
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay_ids.add(id(module.weight))
    seen: set[int] = set()
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if id(p) in no_decay_ids else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear 0->1 over ``warmup`` steps, then cosine 1->``min_ratio`` at ``total``."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _rng_state() -> dict[str, Any]:
    # plain tensors/ints only: Lightning loads checkpoints with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = [kind, torch.from_numpy(np.asarray(keys).copy()), int(pos), int(has_gauss), float(cached)]
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "numpy": numpy_state,
                             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class StreamingModule(pl.LightningModule):
    """LightningModule owning its data: a resumable training stream and a sequential validation pass.

    Subclasses implement ``training_step``/``validation_step`` over collated batches (see
    :class:`ehrfm.data.Collator`) and set ``self.model``.
    """

    def __init__(self, train_data: TokenStreamDataset, val_data: TokenStreamDataset | None, data: DataConfig,
                 optim: OptimConfig, seed: int, max_len: int) -> None:
        super().__init__()
        self.train_data, self.val_data = train_data, val_data
        self.data_cfg, self.optim_cfg, self.seed = data, optim, seed
        self.max_len = max_len  # the tokens' row length (tokenize.json): rows are never longer
        self.collate: Callable[[Sequence[dict[str, Any]]], dict[str, Tensor]] = Collator(max_len=max_len)
        self.micro_batches_seen = 0
        self._pending_rng: dict[str, Any] | None = None

    # --- data ----------------------------------------------------------------------------------
    def _sampler(self, dataset: TokenStreamDataset, shuffle: bool) -> TokenBudgetBatchSampler:
        return TokenBudgetBatchSampler(
            dataset.lengths, self.data_cfg.max_tokens, seed=self.seed, shuffle=shuffle, max_len=self.max_len,
            pool_size=self.data_cfg.pool_size, rank=self.trainer.global_rank,
            world_size=self.trainer.world_size, long_rows=self.data_cfg.long_rows,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        """Micro-batches ``micro_batches_seen .. max_steps * accumulate`` of the training stream."""
        total = self.trainer.max_steps * self.trainer.accumulate_grad_batches
        stream = StreamingBatchSampler(self._sampler(self.train_data, True), total,
                                       start=self.micro_batches_seen)
        # a private generator: DataLoader iterators draw a base seed at creation, which must not consume
        # the global RNG (it would shift dropout masks between a resumed and an uninterrupted run)
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_data, batch_sampler=stream, collate_fn=self.collate,
                          num_workers=self.data_cfg.num_workers, generator=gen)

    def val_dataloader(self) -> DataLoader[Any]:
        """One sequential pass over the validation split."""
        if self.val_data is None or len(self.val_data) == 0:
            return DataLoader(cast(Dataset[Any], []))  # Lightning then skips validation
        return DataLoader(self.val_data, batch_sampler=self._sampler(self.val_data, False),
                          collate_fn=self.collate, num_workers=self.data_cfg.num_workers,
                          generator=torch.Generator().manual_seed(self.seed))

    # --- optimisation --------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        """AdamW + per-step warmup/cosine schedule."""
        o = self.optim_cfg
        opt = torch.optim.AdamW(param_groups(self, o.weight_decay), lr=o.lr, betas=(o.betas[0], o.betas[1]),
                                eps=o.eps)
        total = self.trainer.max_steps
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: warmup_cosine(s, o.warmup_steps, total, o.min_lr_ratio))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # --- exact resume --------------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Apply RNG states restored from a checkpoint right before the first resumed batch."""
        if self._pending_rng is not None:
            _set_rng_state(self._pending_rng)
            self._pending_rng = None

    def count_micro_batch(self) -> None:
        """Subclasses call this once per training_step."""
        self.micro_batches_seen += 1

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the stream position and RNG states."""
        checkpoint["ehrfm"] = {"micro_batches_seen": self.micro_batches_seen, "rng": _rng_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the stream position; RNG states are applied at the next training batch."""
        state = checkpoint.get("ehrfm")
        if state is None:
            raise ValueError("checkpoint has no 'ehrfm' state: it was not written by an ehrfm training run")
        self.micro_batches_seen = int(state["micro_batches_seen"])
        self._pending_rng = state["rng"]
