"""``ehrfm pretrain`` and ``ehrfm finetune`` stages.

``run_pretrain(PretrainConfig, Layout) -> PretrainSummary`` reads ``layout.token_paths`` (``vocab.json``,
``pretrain/``, ``tokenize.json``) and writes ``layout.pretrain_run``::

    model/config.yaml, model.pt, vocab.json   the final weights (EHRFoundationModel.from_pretrained)
    checkpoints/last.ckpt, best.ckpt          Lightning checkpoints (exact resume from last.ckpt)
    run_config.yaml                           the stage config (``--config`` of it repeats the run)
    summary.json                              PretrainSummary

``run_finetune(FinetuneConfig, Layout) -> FinetuneSummary`` reads ``layout.pretrain_run.model`` and the task
rows of ``layout.token_paths``, and writes ``layout.finetune_run``: ``model/`` (the finetuned model, see
:mod:`ehrfm.train.predict`), ``checkpoints/``, ``run_config.yaml``, ``predictions.parquet`` (tuning and
held-out rows in the evaluation contract) and ``summary.json``; with ``evaluate: true`` also the evaluation
report of those predictions in ``layout.evaluation_dir`` (labels from ``layout.labels_dir``, MEDS from
``layout.meds_paths``, oracle rows from ``layout.truth`` when present).

One row length: the ``max_len`` the tokens were cut at (``tokenize.json``). The pretrained model takes it
(``model.max_len: 0``) unless set larger; a model shorter than its tokens is refused, and so is finetuning a
model on tokens longer than its ``max_len``.

MLflow: the store is ``$MLFLOW_TRACKING_URI`` when set, else the layout's embedded store
(``layout.tracking_uri()``, artifacts in ``layout.mlflow_artifacts``); a finetuning run is nested under the
pretraining run when that one was tracked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
from lightning.pytorch.callbacks import Callback, EarlyStopping

from ehrfm.config.base import ConfigError, require
from ehrfm.config.evaluate import BaselineConfig, PrimaryMetric
from ehrfm.config.model import ModelConfig
from ehrfm.config.train import (
    FinetuneConfig,
    FinetuneSummary,
    PretrainConfig,
    PretrainSummary,
    TrackingConfig,
)
from ehrfm.data import TokenStreamDataset
from ehrfm.data.multitask import MultiTaskDataset
from ehrfm.layout import Layout, RunPaths, TokenPaths
from ehrfm.models import EHRFoundationModel
from ehrfm.tokenize.meta import read_tokenizer_config
from ehrfm.tracking import NullTracker, TrackingCallback, git_commit, make_tracker
from ehrfm.train.finetune import FinetuneModule
from ehrfm.train.finetune_run import (
    few_shot_rows,
    fit_calibration,
    infer_spec,
    task_datasets,
    tokenized_tasks,
    tuning_table,
)
from ehrfm.train.loop import build_trainer, find_resume
from ehrfm.train.lora import apply_lora, lora_parameters, merge_lora
from ehrfm.train.predict import FinetunedModel, predict
from ehrfm.train.pretrain import PretrainModule
from ehrfm.vocab import Vocabulary

MODEL_CONFIG, MODEL_WEIGHTS, MODEL_VOCAB = "config.yaml", "model.pt", "vocab.json"


def tokens_max_len(tokens: TokenPaths) -> int:
    """The ``max_len`` the token rows were cut at (``tokens/tokenize.json``)."""
    return read_tokenizer_config(tokens.root).max_len


def _tracker(cfg: TrackingConfig, enabled: bool, layout: Layout) -> NullTracker:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or layout.tracking_uri()
    return make_tracker(enabled and cfg.enabled, layout.root_dir, cfg.experiment, uri,
                        layout.mlflow_artifacts)


def _metric(trainer: pl.Trainer, key: str) -> float | None:
    value = trainer.callback_metrics.get(key)
    return None if value is None else float(value)


def _require_tokens(tokens: TokenPaths, rows: Path) -> None:
    if not tokens.vocab.exists():
        raise FileNotFoundError(f"{tokens.vocab}: missing (tokens={tokens.root} must be written by "
                                "`ehrfm prepare` and `ehrfm tokenize`)")
    if not rows.is_dir():
        raise FileNotFoundError(f"{rows}: no token rows (run `ehrfm tokenize`)")


# --- pretraining ------------------------------------------------------------------------------------------

def run_pretrain(cfg: PretrainConfig, layout: Layout, *,
                 callbacks: Sequence[Callback] = ()) -> PretrainSummary:
    """Pretrain per ``cfg`` on ``layout.token_paths`` into ``layout.pretrain_run``; print and return the
    summary.

    ``callbacks``: extra Lightning callbacks (tests, notebooks).
    """
    tokens, run = layout.token_paths, layout.pretrain_run
    _require_tokens(tokens, tokens.pretrain)
    vocab = Vocabulary.load(tokens.vocab)
    model_cfg = cfg.model.resolve(len(vocab), tokens_max_len(tokens), str(tokens.meta))
    run.root.mkdir(parents=True, exist_ok=True)
    ckpt_path = find_resume(run.checkpoints, cfg.trainer.resume)
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    train = TokenStreamDataset(tokens.pretrain, split=cfg.data.train_split)
    require(len(train) > 0, "data.train_split", cfg.data.train_split,
            f"no pretraining rows of that split in {tokens.pretrain}")
    val = TokenStreamDataset(tokens.pretrain, split=cfg.data.val_split)
    module = PretrainModule(model_cfg, vocab, train, val if len(val) else None, cfg.data, cfg.optim, cfg.loss,
                            cfg.trainer.seed, cfg.query)
    cfg.save(run.config)
    params = {**cfg.to_dict(), "model_resolved": model_cfg.to_dict()}

    tags = {"backbone": model_cfg.backbone, "git_commit": git_commit(Path(__file__).parent),
            "stage": "pretrain", "resumed_from": str(ckpt_path) if ckpt_path else None}
    tracking_cb = TrackingCallback(NullTracker(), cfg.trainer.log_every_n_steps, tags)
    trainer = build_trainer(cfg.trainer, run.checkpoints, cfg.optim.grad_clip, [tracking_cb, *callbacks],
                            has_validation=len(val) > 0)
    tracker = _tracker(cfg.tracking, trainer.is_global_zero, layout)
    tracking_cb.tracker = tracker
    tracker.start_run(cfg.tracking.run_name or f"pretrain-{model_cfg.backbone}", tags={})
    tracker.set_tags(tags)
    tracker.log_params(params)
    t0 = time.time()
    try:
        trainer.fit(module, ckpt_path=str(ckpt_path) if ckpt_path else None)
    except BaseException:
        tracker.end("FAILED")  # checkpoints written so far stay for trainer.resume=last
        raise
    summary = PretrainSummary(
        global_step=trainer.global_step, train_loss=_metric(trainer, "train_loss"),
        val_loss=_metric(trainer, "val_loss"), val_ppl=_metric(trainer, "val_ppl"),
        seconds=round(time.time() - t0, 2), parameters=module.model.num_parameters(), train_rows=len(train),
        val_rows=len(val), backbone=model_cfg.backbone, max_len=model_cfg.max_len, model_dir=str(run.model),
        resumed_from=str(ckpt_path) if ckpt_path else None, mlflow_run_id=tracker.run_id,
        global_rank=trainer.global_rank)
    if trainer.is_global_zero:  # under DDP only rank zero writes and reports
        model_dir = module.model.save_pretrained(run.model)
        shutil.copyfile(tokens.vocab, model_dir / MODEL_VOCAB)
        summary.save(run.summary)
        if tracker.run_id is not None:
            _log_pretrain_outputs(tracker, run)
        print(f"pretrain: {summary.global_step} steps in {summary.seconds} s, {summary.parameters:,} "
              f"parameters ({summary.backbone}, max_len {summary.max_len}), "
              f"train_loss={_fmt(summary.train_loss)} "
              f"val_loss={_fmt(summary.val_loss)} val_ppl={_fmt(summary.val_ppl)}")
        print(f"model: {run.model}  checkpoints: {run.checkpoints}")
    tracker.end("FINISHED")
    return summary


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _log_pretrain_outputs(tracker: NullTracker, run: RunPaths) -> None:
    tracker.log_artifact(run.config)
    tracker.log_artifact(run.summary)
    tracker.log_artifacts(run.model, "model")
    best = run.checkpoints / "best.ckpt"
    if best.exists():
        tracker.log_artifact(best, "checkpoints")


# --- finetuning -------------------------------------------------------------------------------------------

def _pretrained_max_len(src: Path, tokens: TokenPaths) -> int:
    """The tokens' max_len, refused when the pretrained model at ``src`` is shorter."""
    data_len = tokens_max_len(tokens)
    model_len = ModelConfig.load(src / MODEL_CONFIG).max_len
    if model_len and data_len > model_len:
        raise ConfigError(
            f"the pretrained model is shorter than the task rows: model.max_len={model_len} "
            f"({src / MODEL_CONFIG}) < max_len={data_len} of the tokens ({tokens.meta}): re-tokenize with "
            f"tokenizer.max_len <= {model_len}, or pretrain a model with model.max_len >= {data_len}")
    return data_len


def _parent_run(layout: Layout) -> str | None:
    """MLflow run id of the pretraining run, when it was tracked."""
    path = layout.pretrain_run.summary
    if not path.exists():
        return None
    run_id = json.loads(path.read_text()).get("mlflow_run_id")
    return str(run_id) if run_id else None


def run_finetune(cfg: FinetuneConfig, layout: Layout, *, callbacks: Sequence[Callback] = (),
                 predict_splits: Sequence[str] = ("tuning", "held_out")) -> FinetuneSummary:
    """Finetune the pretrained model of ``layout`` on its task rows into ``layout.finetune_run``; predict
    ``predict_splits``; with ``cfg.evaluate`` write the evaluation report; print and return the summary.

    ``callbacks``: extra Lightning callbacks (tests, notebooks).
    """
    tokens, run = layout.token_paths, layout.finetune_run
    src = layout.pretrain_run.model
    if cfg.pretrained is not None:  # a model folder, or a run folder holding model/
        given = Path(cfg.pretrained)
        src = RunPaths(given).model if RunPaths(given).model.is_dir() else given
    if not ((src / MODEL_CONFIG).exists() and (src / MODEL_WEIGHTS).exists()):
        raise FileNotFoundError(f"{src}: no pretrained model ({MODEL_CONFIG} + {MODEL_WEIGHTS}); run "
                                "`ehrfm pretrain` first (or point --runs at the runs folder holding "
                                "pretrain/)")
    _require_tokens(tokens, tokens.tasks)
    tasks = list(cfg.tasks) or tokenized_tasks(tokens)
    require(bool(tasks), "tasks", cfg.tasks, f"no task rows under {tokens.tasks}")
    unknown = sorted(set(cfg.task_weights) - set(tasks))
    require(not unknown, "task_weights", cfg.task_weights,
            f"tasks {unknown} are not finetuned (tasks: {tasks})")
    if cfg.evaluate:  # fail before training, not after
        missing = [str(layout.label_table(t)) for t in tasks if not layout.label_table(t).exists()]
        if missing:
            raise FileNotFoundError(f"evaluate=true: no label table {missing} (run `ehrfm label`)")
        if not layout.meds_paths.subject_splits.exists():
            raise FileNotFoundError(f"evaluate=true: no MEDS splits at {layout.meds_paths.subject_splits}")
    max_len = _pretrained_max_len(src, tokens)
    vocab = Vocabulary.load(src / MODEL_VOCAB if (src / MODEL_VOCAB).exists() else tokens.vocab)
    if Vocabulary.load(tokens.vocab).tokens != vocab.tokens:
        raise ConfigError(f"tokens={tokens.root}: vocab.json differs from the pretrained model's ({src}): "
                          "the tokens must be written with the vocabulary the model was pretrained on")
    run.root.mkdir(parents=True, exist_ok=True)
    ckpt_path = find_resume(run.checkpoints, cfg.trainer.resume)
    pl.seed_everything(cfg.trainer.seed, workers=True, verbose=False)
    train_sets = task_datasets(tokens, tasks, cfg.data.train_split)
    val_sets = task_datasets(tokens, tasks, cfg.data.val_split)
    specs = [infer_spec(t, d if len(d) else v, cfg.heads.tte_edges_days)
             for t, d, v in zip(tasks, train_sets, val_sets, strict=True)]
    subsets = None
    if cfg.adapt.few_shot:
        subsets = [few_shot_rows(d, s.kind, cfg.adapt.few_shot, cfg.adapt.few_shot_seed + i)
                   for i, (d, s) in enumerate(zip(train_sets, specs, strict=True))]
    train = MultiTaskDataset(tasks, train_sets, subsets)
    val = MultiTaskDataset(tasks, val_sets)
    require(len(train) > 0, "data.train_split", cfg.data.train_split,
            f"no task rows of that split for {tasks}")
    model = EHRFoundationModel.from_pretrained(src)
    wrapped: list[str] = []
    if cfg.adapt.mode == "lora":
        wrapped = apply_lora(model, cfg.adapt.lora_rank, cfg.adapt.lora_alpha, cfg.adapt.lora_dropout)
    weights = [float(cfg.task_weights.get(t, 1.0)) for t in tasks]
    module = FinetuneModule(model, vocab, specs, train, val if len(val) else None, cfg.data, cfg.optim,
                            cfg.trainer.seed, max_len, weights, cfg.heads.shared_head, cfg.heads.dropout,
                            cfg.monitor)
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    n_lora = sum(p.numel() for p in lora_parameters(module.model))
    name = cfg.model_name or f"ehrfm_{model.config.backbone}"
    resolved = dataclasses.replace(cfg, tasks=tasks, model_name=name)
    resolved.save(run.config)
    params = {**resolved.to_dict(), "checkpoint": str(src), "max_len": max_len,
              "heads_resolved": [s.to_dict() for s in specs], "lora_modules": wrapped}

    parent = _parent_run(layout)
    tags = {"stage": "finetune", "backbone": model.config.backbone, "mode": cfg.adapt.mode,
            "few_shot": cfg.adapt.few_shot, "tasks": ",".join(tasks),
            "git_commit": git_commit(Path(__file__).parent)}
    tracking_cb = TrackingCallback(NullTracker(), cfg.trainer.log_every_n_steps, tags)
    extra: list[Callback] = [tracking_cb, *callbacks]
    if cfg.patience and len(val):
        extra.append(EarlyStopping("val_monitor", patience=cfg.patience, mode="min", check_finite=False))
    trainer = build_trainer(cfg.trainer, run.checkpoints, cfg.optim.grad_clip, extra, monitor="val_monitor",
                            has_validation=len(val) > 0)
    tracker = _tracker(cfg.tracking, trainer.is_global_zero, layout)
    tracking_cb.tracker = tracker
    tracker.start_run(cfg.tracking.run_name or f"finetune-{name}", parent_run_id=parent)
    tracker.set_tags(tags)
    tracker.log_params(params)
    t0 = time.time()
    try:
        trainer.fit(module, ckpt_path=str(ckpt_path) if ckpt_path else None)
        seconds = round(time.time() - t0, 2)
        best = run.checkpoints / "best.ckpt"
        if best.exists():  # early stopping: keep the best tuning state, not the last one
            import torch

            module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
        val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
        if cfg.adapt.mode == "lora":
            merge_lora(module.model)
        fm = FinetunedModel(module.model.eval(), module.heads.eval(), vocab, specs, name, cfg.topk,
                            cfg.rollout_steps)
        # calibration on the tuning rows, saved with the model: every later prediction applies it
        fm.calibration = fit_calibration(fm, tokens.root, cfg.calibration, cfg.data.val_split,
                                         cfg.data.max_tokens * 4, max_len)
        model_dir = fm.save(run.model)
        preds = predict(fm, tokens.root, tasks, predict_splits, cfg.data.max_tokens * 4, max_len)
        preds.to_parquet(run.predictions, index=False)
        tuning = tuning_table(preds, tokens, specs, cfg.data.val_split, cfg.topk, vocab)
        summary = FinetuneSummary(
            tasks=tasks, global_step=trainer.global_step, seconds=seconds, mode=cfg.adapt.mode,
            few_shot=cfg.adapt.few_shot,
            train_rows={t: len(r) for t, r in zip(tasks, train.rows, strict=True)},
            tuning_rows={t: len(d) for t, d in zip(tasks, val_sets, strict=True)},
            trainable_parameters=trainable, lora_parameters=n_lora, val_metrics_at_best=val_metrics,
            tuning=tuning, model_name=name, max_len=max_len,
            model_dir=str(model_dir), predictions=str(run.predictions), mlflow_run_id=tracker.run_id,
            mlflow_parent_run_id=parent,
            calibration={t: {"method": c.method, **c.fit} for t, c in fm.calibration.tasks.items()}
            if fm.calibration else {})
        if cfg.evaluate:
            summary.report = _evaluate(cfg, layout, run, tracker, tasks)
        summary.save(run.summary)
        if tracker.run_id is not None:
            tracker.log_metrics({f"tuning_{m}/{t}": v for t, ms in tuning.items() for m, v in ms.items()
                                 if isinstance(v, float) and not np.isnan(v)})
            tracker.log_metrics(_calibration_metrics(summary.calibration))
            tracker.set_tags({f"calibration/{t}": c["method"] for t, c in summary.calibration.items()})
            for f in (run.config, run.summary, run.predictions):
                tracker.log_artifact(f)
            tracker.log_artifacts(model_dir, "model")
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    print(summary_table(summary))
    print(f"model: {run.model}  predictions: {run.predictions}")
    return summary


def _calibration_metrics(fits: dict[str, dict[str, Any]]) -> dict[str, float]:
    """MLflow metrics of the calibration fits: ``calibration_<name>/<task>`` for every number a fit saw
    (tte: per edge, ``.../<task>@<days>d``)."""
    out: dict[str, float] = {}

    def add(prefix: str, d: dict[str, Any], suffix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                add(f"{prefix}{k}_", v, suffix)
            elif isinstance(v, int | float) and not isinstance(v, bool) and np.isfinite(v):
                out[f"calibration_{prefix}{k}/{suffix}"] = float(v)

    for task, fit in fits.items():
        for e in fit.get("edges", []):
            add("", e, f"{task}@{e['edge_days']:g}d")
        add("", {k: v for k, v in fit.items() if k != "edges"}, task)
    return out


def _evaluate(cfg: FinetuneConfig, layout: Layout, run: RunPaths, tracker: NullTracker,
              tasks: Sequence[str]) -> list[PrimaryMetric]:
    """The evaluation report of the run's predictions; its files and held-out primary metrics go to the
    run."""
    from ehrfm.evaluate.stage import primary_table, write_report

    ev = write_report(layout, run.predictions, tasks, cfg.truth, cfg.report, BaselineConfig())
    print(primary_table(ev.primary))
    print(f"report: {ev.report_md}")
    if tracker.run_id is not None:
        tracker.log_artifacts(layout.evaluation_dir, "report")
        tracker.log_metrics({f"heldout_{r.metric}/{r.task}/{r.model}": r.value for r in ev.primary
                             if r.value is not None})
    return list(ev.primary)


def summary_table(summary: FinetuneSummary) -> str:
    """Tuning metrics per task as a text table."""
    lines = [f"{'task':<30}{'train':>7}{'tuning':>8}  tuning metrics", "-" * 72]
    for task, mets in summary.tuning.items():
        shown = "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in mets.items() if k != "n")
        if task in summary.calibration:
            shown += f"  calibration={summary.calibration[task]['method']}"
        lines.append(f"{task:<30}{summary.train_rows.get(task, 0):>7}{mets.get('n', 0):>8}  {shown}")
    lines.append(f"mode={summary.mode} few_shot={summary.few_shot} steps={summary.global_step} "
                 f"trainable={summary.trainable_parameters:,} seconds={summary.seconds}")
    return "\n".join(lines)
