"""Multitask prompted finetuning (MTF, EHRMamba-style): data, task-balanced sampling and the Lightning module.

A task row starts and ends with its task prompt token (``[TASK:<name>]``), so one backbone serves every
task: the pooled state of the trailing prompt token goes to that task's head (:mod:`ehrfm.train.heads`).
Each micro-batch mixes tasks: every row's task is drawn with the configured per-task weights, then a row
of that task uniformly; batch ``n`` is a pure function of ``(seed, n)``, so exact resume needs no sampler
state. Validation reports per-task loss and AUROC (binary) / C-index (tte) and their means; early stopping
and ``best.ckpt`` follow ``val_monitor`` (mean loss, or minus mean AUROC: both "lower is better").
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from ehrfm.config.train import DataConfig, OptimConfig
from ehrfm.data import TokenBudgetBatchSampler
from ehrfm.data.dataset import LIST_COLUMNS
from ehrfm.data.multitask import MultiTaskCollator, MultiTaskDataset, TaskBalancedSampler
from ehrfm.models import EHRFoundationModel, pool
from ehrfm.train.base import StreamingModule
from ehrfm.train.generate import code_mask
from ehrfm.train.heads import HeadSpec, TaskHeads, hazard_nll, survival_curve
from ehrfm.vocab import Vocabulary


def task_metrics(kind: str, acc: dict[str, list[Any]]) -> dict[str, float]:
    """AUROC (binary) or Harrell's C-index (tte) from accumulated labels/scores; NaN when undefined."""
    y, score = np.asarray(acc["y"], dtype=float), np.asarray(acc["score"], dtype=float)
    if kind == "binary":
        if len(np.unique(y)) < 2:
            return {"auroc": float("nan")}
        from sklearn.metrics import roc_auc_score

        return {"auroc": float(roc_auc_score(y, score))}
    if kind == "tte":
        from ehrfm.evaluate.bootstrap import DegenerateMetric
        from ehrfm.evaluate.survival import harrell_c

        try:
            return {"cindex": float(harrell_c(y, np.asarray(acc["dur"], dtype=float), score))}
        except DegenerateMetric:
            return {"cindex": float("nan")}
    return {}


def forecast_loss(logits: Tensor, targets: Tensor, mask: Tensor) -> Tensor:
    """Multi-label next-visit loss: mean over each row's target codes of ``-log p(code)``, ``p`` the LM's
    next-token distribution restricted to the ``mask`` codes. logits (b, V), targets (b, T) padded with
    -1, mask (V,) bool. Rows without a valid target are ignored."""
    logp = torch.log_softmax(logits.float().masked_fill(~mask, float("-inf")), -1)
    valid = (targets >= 0) & mask[targets.clamp(min=0)]
    picked = logp.gather(1, targets.clamp(min=0)).masked_fill(~valid, 0.0)
    per_row = picked.sum(1) / valid.sum(1).clamp(min=1)
    has = valid.any(1)
    return -(per_row[has].mean()) if bool(has.any()) else logits.sum() * 0.0


class FinetuneModule(StreamingModule):
    """Backbone + :class:`TaskHeads`; loss = row-weighted mean of the task losses of a mixed batch."""

    def __init__(self, model: EHRFoundationModel, vocab: Vocabulary, specs: list[HeadSpec],
                 train_data: MultiTaskDataset, val_data: MultiTaskDataset | None, data: DataConfig,
                 optim: OptimConfig, seed: int, max_len: int, task_weights: Sequence[float],
                 shared_head: bool = False, head_dropout: float = 0.1, monitor: str = "loss") -> None:
        super().__init__(train_data, val_data, data, optim, seed, max_len)  # type: ignore[arg-type]
        self.model = model
        self.specs = specs
        self.heads = TaskHeads(specs, model.config.d_model, shared_head, head_dropout)
        self.task_weights = list(task_weights)
        self.monitor = monitor
        self.collate = MultiTaskCollator(max_len)
        self.register_buffer("dx_mask", code_mask(vocab), persistent=False)
        self._val: dict[str, dict[str, list[Any]]] = {}

    # --- data ----------------------------------------------------------------------------------
    def train_dataloader(self) -> DataLoader[Any]:
        """The task-balanced stream from micro-batch ``micro_batches_seen`` on."""
        total = self.trainer.max_steps * self.trainer.accumulate_grad_batches
        assert isinstance(self.train_data, MultiTaskDataset)
        sampler = TaskBalancedSampler(self.train_data, self.task_weights, self.data_cfg.max_tokens,
                                      self.max_len, self.seed, total, self.micro_batches_seen,
                                      pool_rows=self.data_cfg.pool_size)
        return DataLoader(self.train_data, batch_sampler=sampler, collate_fn=self.collate,
                          num_workers=self.data_cfg.num_workers,
                          generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader[Any]:
        """Every tuning row once, length-bucketed."""
        if self.val_data is None or len(self.val_data) == 0:
            return DataLoader([])  # type: ignore[arg-type]
        sampler = TokenBudgetBatchSampler(self.val_data.lengths, self.data_cfg.max_tokens, seed=self.seed,
                                          shuffle=False, max_len=self.max_len,
                                          long_rows=self.data_cfg.long_rows)
        return DataLoader(self.val_data, batch_sampler=sampler, collate_fn=self.collate)

    # --- steps ---------------------------------------------------------------------------------
    def task_outputs(self, batch: dict[str, Tensor]
                     ) -> Iterator[tuple[HeadSpec, Tensor, Tensor, dict[str, Tensor]]]:
        """Per task present in ``batch``: (spec, row mask (b,), head output, the task's sub-batch)."""
        out = self.model(**{k: batch[k] for k in LIST_COLUMNS}, return_logits=False)
        pooled = pool(out.hidden, batch["lengths"])
        for t, spec in enumerate(self.specs):
            rows = batch["task_idx"] == t
            if not bool(rows.any()):
                continue
            sub = {k: v[rows] for k, v in batch.items()}
            if spec.kind == "forecast":
                head_out = self.model.lm_head(pooled[rows])
            else:
                head_out = self.heads(spec.task, pooled[rows])
            yield spec, rows, head_out, sub

    def _loss(self, spec: HeadSpec, head_out: Tensor, sub: dict[str, Tensor]) -> Tensor:
        if spec.kind == "forecast":
            mask = self.dx_mask
            assert isinstance(mask, Tensor)
            return forecast_loss(head_out, sub["target_ids"], mask)
        if spec.kind == "binary":
            return F.binary_cross_entropy_with_logits(head_out.float(), sub["label"].float())
        return hazard_nll(head_out, sub["duration_days"], sub["event"], self.heads.edges(spec.task))

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Row-weighted mean of the task losses of one mixed micro-batch."""
        self.count_micro_batch()
        total = torch.zeros((), device=self.device)
        n = int(batch["task_idx"].shape[0])
        for spec, rows, head_out, sub in self.task_outputs(batch):
            loss = self._loss(spec, head_out, sub)
            total = total + loss * int(rows.sum()) / n
            self.log(f"train_loss/{spec.task}", loss, batch_size=int(rows.sum()))
        self.log("train_loss", total, prog_bar=True, batch_size=n)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=n)
        return total

    def on_validation_epoch_start(self) -> None:
        """Reset the per-task accumulators."""
        self._val = {s.task: {"loss": [], "n": [], "y": [], "score": [], "dur": []} for s in self.specs}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accumulate per-task losses and scores."""
        for spec, rows, head_out, sub in self.task_outputs(batch):
            acc = self._val[spec.task]
            acc["loss"].append(float(self._loss(spec, head_out, sub)))
            acc["n"].append(int(rows.sum()))
            if spec.kind == "binary":
                acc["y"].extend(sub["label"].tolist())
                acc["score"].extend(head_out.float().tolist())
            elif spec.kind == "tte":
                acc["y"].extend(sub["event"].tolist())
                acc["dur"].extend(sub["duration_days"].tolist())
                acc["score"].extend((1.0 - survival_curve(head_out)[:, -1]).tolist())

    def on_validation_epoch_end(self) -> None:
        """Per-task ``val_loss/<task>``, ``val_auroc/<task>`` (``val_cindex/<task>``), their means and
        ``val_monitor``."""
        losses, aurocs = [], []
        for spec in self.specs:
            acc = self._val.get(spec.task, {})
            if not acc or not acc["n"]:
                continue
            mean_loss = float(np.average(acc["loss"], weights=acc["n"]))
            losses.append(mean_loss)
            self.log(f"val_loss/{spec.task}", mean_loss)
            for name, value in task_metrics(spec.kind, acc).items():
                self.log(f"val_{name}/{spec.task}", value)
                if name in ("auroc", "cindex"):
                    aurocs.append(value)
        if losses:
            self.log("val_loss", float(np.mean(losses)), prog_bar=True)
        if aurocs:
            self.log("val_auroc", float(np.nanmean(aurocs)), prog_bar=True)
        if losses:
            mon = -float(np.nanmean(aurocs)) if self.monitor == "auroc" and aurocs else float(np.mean(losses))
            self.log("val_monitor", mon)
