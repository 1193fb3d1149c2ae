"""Next-token pretraining: the loss and the Lightning module (the stage runner: :mod:`ehrfm.train.stage`)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ehrfm.config.train import DataConfig, LossConfig, OptimConfig, QueryConfig
from ehrfm.data import LIST_COLUMNS, TokenStreamDataset
from ehrfm.models import EHRFoundationModel, ModelConfig
from ehrfm.schema import INTERVAL_TOKENS, PAD_ID, SPECIAL_TOKENS
from ehrfm.train.base import StreamingModule
from ehrfm.train.query import QuerySampler, answers, death_token, query_bce
from ehrfm.vocab import Vocabulary

IGNORE = -100


def excluded_ids(vocab: Vocabulary, loss: LossConfig) -> list[int]:
    """Token ids never used as targets: [PAD] always, special/interval tokens when configured."""
    ids = {PAD_ID}
    if loss.exclude_special:
        ids.update(vocab.id(t) for t in SPECIAL_TOKENS)
    if loss.exclude_interval:
        ids.update(vocab.id(t) for t in INTERVAL_TOKENS if t in vocab)
    return sorted(ids)


def next_token_loss(logits: Tensor, concept_ids: Tensor, ignore_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of predicting token t+1 from position t, in fp32.

    logits (b, l, V), concept_ids (b, l), ignore_ids (k,). Returns (mean loss, number of target tokens).
    """
    targets = concept_ids[:, 1:].clone()
    targets[torch.isin(targets, ignore_ids)] = IGNORE
    n = (targets != IGNORE).sum()
    flat = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=IGNORE, reduction="sum")
    return loss / n.clamp(min=1), n


class PretrainModule(StreamingModule):
    """EHRFoundationModel + next-token loss (+ the query loss with ``query.weight`` > 0); logs
    ``train_loss``, ``lr``, ``val_loss``, ``val_ppl`` (next-token only) and with queries
    ``train_query_loss``, ``val_query_loss``."""

    def __init__(self, model_cfg: ModelConfig, vocab: Vocabulary, train_data: TokenStreamDataset,
                 val_data: TokenStreamDataset | None, data: DataConfig, optim: OptimConfig, loss: LossConfig,
                 seed: int, query: QueryConfig | None = None) -> None:
        super().__init__(train_data, val_data, data, optim, seed, model_cfg.max_len)
        self.model = EHRFoundationModel(model_cfg)
        self.register_buffer("ignore_ids", torch.tensor(excluded_ids(vocab, loss)), persistent=False)
        self._val_sum = 0.0
        self._val_n = 0
        self.query_cfg = query if query is not None and query.weight > 0 else None
        self.sampler = QuerySampler(vocab, self.query_cfg) if self.query_cfg is not None else None
        self.death_id = death_token(vocab)
        if self.query_cfg is not None:
            self.model.attach_query_head(list(self.query_cfg.horizons))
        self._val_q = [0.0, 0]

    def _loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        loss, n, _ = self._losses(batch, None)
        return loss, n

    def _losses(self, batch: dict[str, Tensor], query_seed: int | None
                ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(next-token loss, its target count, query loss or None). ``query_seed`` seeds the query draw
        (None: no query loss)."""
        out = self.model(**{k: batch[k] for k in LIST_COLUMNS})
        assert out.logits is not None
        ignore = self.ignore_ids
        assert isinstance(ignore, Tensor)
        loss, n = next_token_loss(out.logits, batch["concept_ids"], ignore)
        if self.sampler is None or query_seed is None or self.model.query_head is None:
            return loss, n, None
        gen = torch.Generator().manual_seed(query_seed)
        q = self.sampler.sample(batch["times"], batch["lengths"], gen).to(out.hidden.device)
        if len(q) == 0:
            return loss, n, out.hidden.sum() * 0.0
        labels = answers(batch["concept_ids"], batch["times"], batch["lengths"], q,
                         self.model.query_head.horizons_days, self.death_id)
        logits = self.model.query_logits(out.hidden[q.rows, q.cut_pos], q.targets, q.horizon_idx)
        return loss, n, query_bce(logits, labels)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """One micro-batch: mean next-token loss (+ query.weight x the query BCE)."""
        self.count_micro_batch()
        # a fresh query draw per micro-batch, reproducible from (seed, micro-batch count)
        loss, n, qloss = self._losses(batch, self.seed * 1_000_003 + self.micro_batches_seen)
        bs = batch["concept_ids"].shape[0]
        self.log("train_loss", loss, prog_bar=True, batch_size=bs)
        self.log("train_tokens", n.float(), reduce_fx="sum", batch_size=bs)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True, batch_size=bs)
        if qloss is not None and self.query_cfg is not None:
            self.log("train_query_loss", qloss, prog_bar=True, batch_size=bs)
            return loss + self.query_cfg.weight * qloss
        return loss

    def on_validation_epoch_start(self) -> None:
        """Reset the token-weighted sums."""
        self._val_sum, self._val_n = 0.0, 0
        self._val_q = [0.0, 0]

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        """Accumulate summed loss and token count (perplexity is per token, not per batch); the query loss
        with the same query draw at every validation (seeded by the batch index)."""
        loss, n, qloss = self._losses(batch, batch_idx)
        self._val_sum += float(loss) * int(n)
        self._val_n += int(n)
        if qloss is not None:
            self._val_q[0] += float(qloss)
            self._val_q[1] += 1

    def on_validation_epoch_end(self) -> None:
        """Token-weighted mean loss and perplexity over all ranks."""
        totals = torch.tensor([self._val_sum, float(self._val_n)], device=self.device, dtype=torch.float64)
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")
        if totals[1] > 0:
            mean = float(totals[0] / totals[1])
            # already reduced over ranks; sync_dist averages identical values (and keeps Lightning quiet)
            self.log("val_loss", mean, sync_dist=True)
            self.log("val_ppl", math.exp(min(mean, 50.0)), prog_bar=True, sync_dist=True)
        if self._val_q[1]:
            self.log("val_query_loss", self._val_q[0] / self._val_q[1], sync_dist=True)

    def hparams_dict(self) -> dict[str, Any]:
        """Model config as a dict (for logging)."""
        return self.model.config.to_dict()
