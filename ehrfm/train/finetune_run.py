"""``run_finetuning``: a pretrained checkpoint + task token rows in, a finetuned model + predictions out.

Output layout (``<output>/``)::

    model/                     the finetuned model (see :mod:`ehrfm.train.predict`): config.yaml, model.pt,
                               vocab.json, heads.pt, heads.json
    checkpoints/last.ckpt, best.ckpt   Lightning checkpoints (best by ``val_monitor``)
    finetune_config.yaml       the resolved config, with the checkpoint, tasks and mode
    predictions.parquet        tuning + held-out predictions in the evaluation contract
    summary.json               tuning metrics per task, steps, timings, MLflow run ids

Local adaptation: ``adapt.mode: full`` trains everything; ``lora`` freezes the backbone and trains LoRA
matrices on its linear projections plus the heads (and, for forecasting, nothing else: the tied LM head is
frozen); ``adapt.few_shot: K`` keeps K labelled training rows per task (stratified by label/event, seeded).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import lightning.pytorch as pl
import numpy as np
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping

from ehrfm.data import TokenStreamDataset
from ehrfm.models import EHRFoundationModel
from ehrfm.tracking import NullTracker, TrackingCallback, git_commit, make_tracker
from ehrfm.train.config import (
    DataConfig,
    OptimConfig,
    TrackingConfig,
    TrainerConfig,
    _apply,
    _build,
    parse_set,
)
from ehrfm.train.finetune import FinetuneModule, MultiTaskDataset
from ehrfm.train.heads import DEFAULT_EDGES, HeadSpec
from ehrfm.train.loop import build_trainer, find_resume
from ehrfm.train.lora import apply_lora, lora_parameters, merge_lora
from ehrfm.train.predict import FinetunedModel, predict
from ehrfm.vocab import Vocabulary


@dataclass
class HeadsConfig:
    """Heads: one per task unless ``shared_head`` (binary tasks); tte bin edges in days."""

    shared_head: bool = False
    dropout: float = 0.1
    tte_edges_days: list[float] = field(default_factory=lambda: list(DEFAULT_EDGES))


@dataclass
class AdaptConfig:
    """``mode``: full | lora; ``few_shot``: labelled training rows per task (0 = all)."""

    mode: str = "full"
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    few_shot: int = 0
    few_shot_seed: int = 0


@dataclass
class FinetuneConfig:
    """Everything ``ehrfm finetune`` needs besides checkpoint, data and output paths."""

    seed: int = 0
    task_weights: dict[str, float] = field(default_factory=dict)  # relative sampling weight; missing = 1
    monitor: str = "loss"  # early stopping / best checkpoint: mean tuning loss, or mean AUROC ("auroc")
    patience: int = 3  # validations without improvement before stopping (0 = never stop early)
    model_name: str | None = None  # predictions' ``model`` column; default ehrfm_<backbone>
    topk: int = 10
    rollout_steps: int = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(max_len=512, max_tokens=4096))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-4, weight_decay=0.01, warmup_steps=10))
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(max_steps=200, val_check_interval=50,
                                                                         checkpoint_every_n_steps=50))
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="ehrfm-finetune"))
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    adapt: AdaptConfig = field(default_factory=AdaptConfig)

    def __post_init__(self) -> None:
        if self.monitor not in ("loss", "auroc"):
            raise ValueError(f"monitor={self.monitor!r}: expected 'loss' or 'auroc'")
        if self.adapt.mode not in ("full", "lora"):
            raise ValueError(f"adapt.mode={self.adapt.mode!r}: expected 'full' or 'lora'")
        if self.adapt.few_shot < 0:
            raise ValueError(f"adapt.few_shot={self.adapt.few_shot}: must be >= 0")
        for task, w in self.task_weights.items():
            if not isinstance(w, int | float) or w < 0:
                raise ValueError(f"task_weights.{task}={w!r}: must be a number >= 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict."""
        return dataclasses.asdict(self)


def load_finetune_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> FinetuneConfig:
    """Read the YAML at ``path`` (defaults when None), apply ``--set`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a YAML mapping")
        data = loaded
    _apply(data, parse_set(overrides))
    return cast(FinetuneConfig, _build(FinetuneConfig, data))


def pretrained_dir(checkpoint: str | Path) -> Path:
    """The model folder of a pretraining run (``<run>/model``) or the folder itself."""
    p = Path(checkpoint)
    for cand in (p / "model", p):
        if (cand / "config.yaml").exists() and (cand / "model.pt").exists():
            return cand
    raise FileNotFoundError(f"--checkpoint {p}: no config.yaml + model.pt in it or in its model/ folder "
                            "(pass the output directory of `ehrfm pretrain`)")


def infer_spec(task: str, ds: TokenStreamDataset, edges: list[float]) -> HeadSpec:
    """Head kind from the task rows' label columns: target_ids -> forecast, duration+event -> tte, label -> binary."""
    item = ds[0]
    if item.get("target_ids") is not None:
        return HeadSpec(task, "forecast")
    if item.get("duration_days") is not None and item.get("event") is not None:
        return HeadSpec(task, "tte", list(edges))
    if item.get("label") is not None:
        return HeadSpec(task, "binary")
    raise ValueError(f"task {task!r}: first row (subject_id={item['subject_id']}) has no label, duration/event "
                     "or target_ids")


def few_shot_rows(ds: TokenStreamDataset, kind: str, k: int, seed: int) -> np.ndarray:
    """``k`` row indices stratified by class (binary label / tte event; forecast: uniform), seeded.

    Each class gets ``round(k * share)`` rows but at least one when it exists, so a rare positive class is
    never left out of a few-shot set.
    """
    n = len(ds)
    if k >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if kind == "forecast":
        return np.sort(rng.choice(n, size=k, replace=False))
    col = "label" if kind == "binary" else "event"
    y = np.asarray([ds[i][col] for i in range(n)], dtype=float)
    classes = np.unique(y)
    take = {c: max(1, int(round(k * float((y == c).mean())))) for c in classes}
    while sum(take.values()) > k:  # rounding up the rare classes can overshoot: trim the largest
        big = max(take, key=lambda c: take[c])
        take[big] -= 1
    out = [rng.choice(np.nonzero(y == c)[0], size=min(m, int((y == c).sum())), replace=False) for c, m in take.items()]
    return np.sort(np.concatenate(out))


def _datasets(tokens: Path, tasks: Sequence[str], split: str) -> list[TokenStreamDataset]:
    out = []
    for t in tasks:
        folder = tokens / "tasks" / t
        if not folder.is_dir():
            raise FileNotFoundError(f"task {t!r}: {folder} not found (run `ehrfm tokenize --labels ...` for it)")
        out.append(TokenStreamDataset(folder, split=split, task=t))
    return out


def run_finetuning(cfg: FinetuneConfig, checkpoint: str | Path, data_dir: str | Path, tasks: Sequence[str],
                   output: str | Path, resume: str | None = None, callbacks: Sequence[Callback] = (),
                   predict_splits: Sequence[str] = ("tuning", "held_out")) -> dict[str, Any]:
    """Finetune per ``cfg``; returns the summary also written to ``<output>/summary.json``."""
    output, tokens = Path(output), Path(data_dir)
    output.mkdir(parents=True, exist_ok=True)
    src = pretrained_dir(checkpoint)
    vocab = Vocabulary.load(src / "vocab.json" if (src / "vocab.json").exists() else tokens / "vocab.json")
    data_vocab = Vocabulary.load(tokens / "vocab.json")
    if data_vocab.tokens != vocab.tokens:
        raise ValueError(f"{tokens / 'vocab.json'} differs from the checkpoint's vocabulary: tokens must be written "
                         "with the vocabulary the model was pretrained on")
    pl.seed_everything(cfg.seed, workers=True, verbose=False)
    train_sets, val_sets = _datasets(tokens, tasks, cfg.data.train_split), _datasets(tokens, tasks, cfg.data.val_split)
    specs = [infer_spec(t, d if len(d) else v, cfg.heads.tte_edges_days)
             for t, d, v in zip(tasks, train_sets, val_sets, strict=True)]
    subsets = None
    if cfg.adapt.few_shot:
        subsets = [few_shot_rows(d, s.kind, cfg.adapt.few_shot, cfg.adapt.few_shot_seed + i)
                   for i, (d, s) in enumerate(zip(train_sets, specs, strict=True))]
    train = MultiTaskDataset(tasks, train_sets, subsets)
    val = MultiTaskDataset(tasks, val_sets)
    if len(train) == 0:
        raise ValueError(f"no training rows (split {cfg.data.train_split!r}) for tasks {list(tasks)} in {tokens}")
    model = EHRFoundationModel.from_pretrained(src)
    wrapped: list[str] = []
    if cfg.adapt.mode == "lora":
        wrapped = apply_lora(model, cfg.adapt.lora_rank, cfg.adapt.lora_alpha, cfg.adapt.lora_dropout)
    weights = [float(cfg.task_weights.get(t, 1.0)) for t in tasks]
    module = FinetuneModule(model, vocab, specs, train, val if len(val) else None, cfg.data, cfg.optim, cfg.seed,
                            weights, cfg.heads.shared_head, cfg.heads.dropout, cfg.monitor)
    counts = {"trainable_parameters": sum(p.numel() for p in module.parameters() if p.requires_grad),
              "lora_parameters": sum(p.numel() for p in lora_parameters(module.model))}
    name = cfg.model_name or f"ehrfm_{model.config.backbone}"
    resolved = {**cfg.to_dict(), "checkpoint": str(src), "tasks": list(tasks), "heads_resolved": [s.to_dict() for s in specs],
                "lora_modules": wrapped, "model_name": name}
    (output / "finetune_config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))

    parent = _pretrain_run(src)
    tags = {"stage": "finetune", "backbone": model.config.backbone, "mode": cfg.adapt.mode,
            "few_shot": cfg.adapt.few_shot, "tasks": ",".join(tasks), "git_commit": git_commit(Path(__file__).parent)}
    tracking_cb = TrackingCallback(NullTracker(), cfg.trainer.log_every_n_steps, tags)
    extra: list[Callback] = [tracking_cb, *callbacks]
    if cfg.patience and len(val):
        extra.append(EarlyStopping("val_monitor", patience=cfg.patience, mode="min", check_finite=False))
    trainer = build_trainer(cfg.trainer, output / "checkpoints", cfg.optim.grad_clip, extra, monitor="val_monitor",
                            has_validation=len(val) > 0)
    tracker = make_tracker(cfg.tracking.enabled and trainer.is_global_zero, parent[0] or output,
                           cfg.tracking.experiment, cfg.tracking.tracking_uri)
    tracking_cb.tracker = tracker
    tracker.start_run(cfg.tracking.run_name or f"finetune-{name}", parent_run_id=parent[1])
    tracker.set_tags(tags)
    tracker.log_params(resolved)
    t0 = time.time()
    try:
        trainer.fit(module, ckpt_path=_ckpt(output, resume))
    except BaseException:
        tracker.end("FAILED")
        raise
    seconds = time.time() - t0
    best = output / "checkpoints" / "best.ckpt"
    if best.exists():  # early stopping: keep the best tuning state, not the last one
        import torch

        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    val_metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val")}
    if cfg.adapt.mode == "lora":
        merge_lora(module.model)
    fm = FinetunedModel(module.model.eval(), module.heads.eval(), vocab, specs, name, cfg.topk, cfg.rollout_steps)
    model_dir = fm.save(output / "model")
    preds = predict(fm, tokens, tasks, predict_splits, cfg.data.max_tokens * 4, cfg.data.max_len)
    preds.to_parquet(output / "predictions.parquet", index=False)
    tuning = _tuning_table(preds, tokens, specs, cfg, vocab)
    summary: dict[str, Any] = {
        "global_step": trainer.global_step, "seconds": round(seconds, 2), "mode": cfg.adapt.mode,
        "few_shot": cfg.adapt.few_shot, "train_rows": {t: len(r) for t, r in zip(tasks, train.rows, strict=True)},
        "tuning_rows": {t: len(d) for t, d in zip(tasks, val_sets, strict=True)},
        **counts,
        "val_metrics_at_best": val_metrics, "tuning": tuning, "model_name": name,
        "mlflow_run_id": tracker.run_id, "mlflow_parent_run_id": parent[1],
        "mlflow_dir": str((parent[0] or output).resolve()), "mlflow_experiment": cfg.tracking.experiment,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    if tracker.run_id is not None:
        tracker.log_metrics({f"tuning_{m}/{t}": v for t, ms in tuning.items() for m, v in ms.items()
                             if isinstance(v, float) and not np.isnan(v)})
        for f in ("finetune_config.yaml", "summary.json", "predictions.parquet"):
            tracker.log_artifact(output / f)
        tracker.log_artifacts(model_dir, "model")
    tracker.end("FINISHED")
    return summary


def _ckpt(output: Path, resume: str | None) -> str | None:
    path = find_resume(output / "checkpoints", resume)
    return str(path) if path else None


def _pretrain_run(src: Path) -> tuple[Path | None, str | None]:
    """(pretraining run folder holding mlflow.db, its run id) when the checkpoint came from `ehrfm pretrain`."""
    run_dir = src.parent
    summary = run_dir / "summary.json"
    if not summary.exists():
        return None, None
    # The run id counts even when the store is $MLFLOW_TRACKING_URI rather than <run_dir>/mlflow.db.
    store_dir = run_dir if (run_dir / "mlflow.db").exists() else None
    return store_dir, json.loads(summary.read_text()).get("mlflow_run_id")


def _tuning_table(preds: Any, tokens: Path, specs: list[HeadSpec], cfg: FinetuneConfig,
                  vocab: Vocabulary) -> dict[str, dict[str, Any]]:
    """Tuning-split AUROC / C-index / forecast recall@k per task, from the written predictions."""
    from ehrfm.train.finetune import task_metrics

    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        ds = TokenStreamDataset(tokens / "tasks" / spec.task, split=cfg.data.val_split, task=spec.task)
        p = preds[(preds["task"] == spec.task) & (preds["split"] == cfg.data.val_split)]
        if len(ds) == 0 or len(p) != len(ds):
            out[spec.task] = {"n": len(p)}
            continue
        items = [ds[i] for i in range(len(ds))]  # predict() visits rows in sampler order: realign by key
        order = {(int(ds.subject_ids[i]), str(ds.prediction_times[i] if ds.prediction_times else i)): i
                 for i in range(len(ds))}
        idx = [order[(int(s), str(t.to_pydatetime()))] for s, t in zip(p["subject_id"], p["prediction_time"],
                                                                      strict=True)]
        if spec.kind == "binary":
            acc = {"y": [items[i]["label"] for i in idx], "score": list(p["prob"])}
        elif spec.kind == "tte":
            acc = {"y": [items[i]["event"] for i in idx], "dur": [items[i]["duration_days"] for i in idx],
                   "score": list(p["risk"])}
        else:
            hits = [len(set(c) & {vocab.token(int(j)) for j in targets}) / len(targets)
                    for i, c in zip(idx, p["topk_codes"], strict=True) if (targets := items[i]["target_ids"] or [])]
            out[spec.task] = {"n": len(p), f"recall_at_{cfg.topk}": float(np.mean(hits))}
            continue
        out[spec.task] = {"n": len(p), "positives": int(np.nansum(acc["y"])), **task_metrics(spec.kind, acc)}
    return out
