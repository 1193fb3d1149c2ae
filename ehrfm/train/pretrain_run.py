"""``run_pretraining``: token streams in, ``<output>/model/`` + Lightning checkpoints + an MLflow run out.

Output layout::

    <output>/model/config.yaml, model.pt, vocab.json   final weights (load with EHRFoundationModel.from_pretrained)
    <output>/checkpoints/last.ckpt, best.ckpt          Lightning checkpoints (exact resume from last.ckpt)
    <output>/pretrain_config.yaml                      the resolved config
    <output>/summary.json                              steps, losses, timings, parameter count, run id
    <output>/mlflow.db, mlartifacts/                   the default MLflow store (unless MLFLOW_TRACKING_URI)
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from lightning.pytorch.callbacks import Callback

from ehrfm.data import TokenStreamDataset
from ehrfm.tracking import NullTracker, TrackingCallback, git_commit, make_tracker
from ehrfm.train.config import PretrainConfig, build_model_config
from ehrfm.train.loop import build_trainer, find_resume
from ehrfm.train.pretrain import PretrainModule
from ehrfm.vocab import Vocabulary


def token_paths(data_dir: str | Path) -> tuple[Path, Path]:
    """(vocab.json, folder of pretraining parquet) of a tokens directory (``<tokens>/pretrain/`` or the
    folder itself when it holds the parquet directly)."""
    data_dir = Path(data_dir)
    vocab = data_dir / "vocab.json"
    if not vocab.exists():
        raise FileNotFoundError(f"{vocab} not found: --data must be a tokens directory written by `ehrfm tokenize`")
    rows = data_dir / "pretrain" if (data_dir / "pretrain").is_dir() else data_dir
    return vocab, rows


def run_pretraining(cfg: PretrainConfig, data_dir: str | Path, output: str | Path, resume: str | None = None,
                    callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train per ``cfg``; returns the summary also written to ``<output>/summary.json``."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    ckpt_dir = output / "checkpoints"
    ckpt_path = find_resume(ckpt_dir, resume)
    vocab_path, rows = token_paths(data_dir)
    vocab = Vocabulary.load(vocab_path)
    model_cfg = build_model_config(cfg, vocab_path)
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    train = TokenStreamDataset(rows, split=cfg.data.train_split)
    if len(train) == 0:
        raise ValueError(f"{rows}: no rows with split={cfg.data.train_split!r}")
    val = TokenStreamDataset(rows, split=cfg.data.val_split)
    module = PretrainModule(model_cfg, vocab, train, val if len(val) else None, cfg.data, cfg.optim, cfg.loss,
                            cfg.seed)
    resolved = cfg.to_dict()
    resolved["model_resolved"] = model_cfg.to_dict()
    (output / "pretrain_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    tags = {"backbone": model_cfg.backbone, "git_commit": git_commit(Path(__file__).parent), "stage": "pretrain",
            "resumed_from": str(ckpt_path) if ckpt_path else None}
    tracking_cb = TrackingCallback(NullTracker(), cfg.trainer.log_every_n_steps, tags)
    trainer = build_trainer(cfg.trainer, ckpt_dir, cfg.optim.grad_clip, [tracking_cb, *callbacks],
                            has_validation=len(val) > 0)
    tracker = make_tracker(cfg.tracking.enabled and trainer.is_global_zero, output, cfg.tracking.experiment,
                           cfg.tracking.tracking_uri)
    tracking_cb.tracker = tracker
    tracker.start_run(cfg.tracking.run_name or f"pretrain-{model_cfg.backbone}", tags={})
    tracker.set_tags(tags)
    tracker.log_params(resolved)
    t0 = time.time()
    try:
        trainer.fit(module, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except BaseException:
        tracker.end("FAILED")  # checkpoints written so far stay for --resume auto
        raise
    seconds = time.time() - t0
    summary: dict[str, Any] = {
        "global_step": trainer.global_step,
        "train_loss": _metric(trainer, "train_loss"),
        "val_loss": _metric(trainer, "val_loss"),
        "val_ppl": _metric(trainer, "val_ppl"),
        "seconds": round(seconds, 2),
        "parameters": module.model.num_parameters(),
        "train_rows": len(train),
        "val_rows": len(val),
        "backbone": model_cfg.backbone,
        "resumed_from": str(ckpt_path) if ckpt_path else None,
        "mlflow_run_id": tracker.run_id,
        "global_rank": trainer.global_rank,
    }
    if trainer.is_global_zero:
        model_dir = module.model.save_pretrained(output / "model")
        shutil.copyfile(vocab_path, model_dir / "vocab.json")
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
        if tracker.run_id is not None:
            _log_outputs(tracker, output, model_dir)
    tracker.end("FINISHED")
    return summary


def _metric(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


def _log_outputs(tracker: Any, output: Path, model_dir: Path) -> None:
    tracker.log_artifact(output / "pretrain_config.yaml")
    tracker.log_artifact(output / "summary.json")
    tracker.log_artifacts(model_dir, "model")
    best = output / "checkpoints" / "best.ckpt"
    if best.exists():
        tracker.log_artifact(best, "checkpoints")
