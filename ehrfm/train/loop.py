"""Trainer construction shared by pretraining and finetuning: precision, checkpoints, resume lookup.

Multi-GPU needs no code change: ``trainer.devices``/``trainer.strategy``/``trainer.num_nodes`` go straight
to Lightning, which also picks up ``torchrun`` environments. Batches are split across ranks by the
sampler itself, so Lightning's distributed sampler injection is turned off.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from ehrfm.config.train import TrainerConfig

LAST = "last.ckpt"
RESUME_LAST = ("last", "auto")
"""``trainer.resume`` values meaning "continue from ``last.ckpt`` when there is one"."""


def resolve_precision(cfg: TrainerConfig) -> str:
    """``auto`` -> ``bf16-mixed`` when training on a CUDA GPU, else ``32-true``."""
    if cfg.precision != "auto":
        return cfg.precision
    on_gpu = cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return "bf16-mixed" if on_gpu else "32-true"


def checkpoint_callbacks(ckpt_dir: Path, every_n_steps: int,
                         monitor: str = "val_loss") -> list[ModelCheckpoint]:
    """``last.ckpt`` every ``every_n_steps`` optimizer steps, and ``best.ckpt`` by ``monitor`` (min)."""
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="step{step}", every_n_train_steps=every_n_steps,
                           save_top_k=0, save_last=True)
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min", save_top_k=1,
                           auto_insert_metric_name=False, enable_version_counter=False)
    return [last, best]


def build_trainer(cfg: TrainerConfig, ckpt_dir: Path, grad_clip: float | None = None,
                  callbacks: Sequence[Callback] = (), monitor: str = "val_loss",
                  has_validation: bool = True) -> pl.Trainer:
    """A Lightning Trainer from ``cfg`` with checkpointing into ``ckpt_dir``."""
    return pl.Trainer(
        max_steps=cfg.max_steps,
        max_epochs=-1,  # the training stream is one long epoch; max_steps ends it
        accumulate_grad_batches=cfg.accumulate_grad_batches,
        # in micro-batches; capped so a short run still validates once at its end
        val_check_interval=min(cfg.val_check_interval, cfg.max_steps) * cfg.accumulate_grad_batches,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.limit_val_batches if has_validation else 0,
        num_sanity_val_steps=0,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,
        precision=resolve_precision(cfg),  # type: ignore[arg-type]
        gradient_clip_val=grad_clip or None,  # by global norm, after AMP unscaling, once per optimizer step
        callbacks=[*checkpoint_callbacks(ckpt_dir, cfg.checkpoint_every_n_steps, monitor), *callbacks],
        logger=False,  # metrics go through ehrfm.tracking (TrackingCallback)
        enable_progress_bar=cfg.progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        log_every_n_steps=cfg.log_every_n_steps,
        deterministic=False,
    )


def find_resume(ckpt_dir: Path, resume: str | None) -> Path | None:
    """``None`` -> start fresh (refusing to overwrite an existing ``last.ckpt``); ``"last"`` (or ``"auto"``)
    -> ``last.ckpt`` when present, else fresh; anything else is a checkpoint path."""
    last = ckpt_dir / LAST
    if resume is None:
        if last.exists():
            raise FileExistsError(f"{last} exists: set trainer.resume=last (--trainer.resume last) to "
                                  "continue that run, or write to another runs folder (--runs)")
        return None
    if resume in RESUME_LAST:
        return last if last.exists() else None
    path = Path(resume)
    if not path.exists():
        raise FileNotFoundError(f"trainer.resume={resume!r}: checkpoint not found")
    return path
