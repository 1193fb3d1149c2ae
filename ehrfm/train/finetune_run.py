"""Finetuning helpers used by the ``ehrfm finetune`` stage (:func:`ehrfm.train.stage.run_finetune`): the task
datasets, the head kind of a task, few-shot row draws and the tuning-split metrics table.

Local adaptation: ``adapt.mode: full`` trains everything; ``lora`` freezes the backbone and trains LoRA
matrices on its linear projections plus the heads (and, for forecasting, nothing else: the tied LM head is
frozen); ``adapt.few_shot: K`` keeps K labelled training rows per task (stratified by label/event, seeded).

Calibration (:func:`fit_calibration`): after training, the heads' raw outputs on the tuning rows and their
labels fit each task's post-hoc calibration (:mod:`ehrfm.train.calibration`), saved with the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ehrfm.config.train import CalibrationConfig
from ehrfm.data import TokenStreamDataset
from ehrfm.layout import TokenPaths
from ehrfm.train.calibration import Calibration, TaskCalibration, fit_binary, fit_temperature, fit_tte
from ehrfm.train.finetune import task_metrics
from ehrfm.train.generate import code_mask
from ehrfm.train.heads import HeadSpec, survival_curve
from ehrfm.train.predict import FinetunedModel, head_output, task_batches
from ehrfm.vocab import Vocabulary


def tokenized_tasks(tokens: TokenPaths) -> list[str]:
    """Names of the tasks with task rows under ``tokens/tasks/`` (sorted)."""
    if not tokens.tasks.is_dir():
        raise FileNotFoundError(f"{tokens.tasks}: no task rows (run `ehrfm tokenize` with label tables)")
    return sorted(p.name for p in tokens.tasks.iterdir() if p.is_dir())


def task_datasets(tokens: TokenPaths, tasks: Sequence[str], split: str) -> list[TokenStreamDataset]:
    """One :class:`TokenStreamDataset` per task: its rows of ``split`` under ``tokens/tasks/<task>/``."""
    out = []
    for t in tasks:
        folder = tokens.task(t)
        if not folder.is_dir():
            raise FileNotFoundError(f"task {t!r}: {folder} not found (tokenize its label table with "
                                    "`ehrfm tokenize`)")
        out.append(TokenStreamDataset(folder, split=split, task=t))
    return out


def infer_spec(task: str, ds: TokenStreamDataset, edges: Sequence[float]) -> HeadSpec:
    """Head kind from the task rows' label columns: target_ids -> forecast, duration+event -> tte,
    label -> binary."""
    item = ds[0]
    if item.get("target_ids") is not None:
        return HeadSpec(task, "forecast")
    if item.get("duration_days") is not None and item.get("event") is not None:
        return HeadSpec(task, "tte", list(edges))
    if item.get("label") is not None:
        return HeadSpec(task, "binary")
    raise ValueError(f"task {task!r}: first row (subject_id={item['subject_id']}) has no label, "
                     "duration/event or target_ids")


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
    out = [rng.choice(np.nonzero(y == c)[0], size=min(m, int((y == c).sum())), replace=False)
           for c, m in take.items()]
    return np.sort(np.concatenate(out))


def tuning_table(preds: pd.DataFrame, tokens: TokenPaths, specs: Sequence[HeadSpec], split: str, topk: int,
                 vocab: Vocabulary) -> dict[str, dict[str, Any]]:
    """``split`` AUROC / C-index / forecast recall@k per task, from the written predictions."""
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        ds = TokenStreamDataset(tokens.task(spec.task), split=split, task=spec.task)
        p = preds[(preds["task"] == spec.task) & (preds["split"] == split)]
        if len(ds) == 0 or len(p) != len(ds):
            out[spec.task] = {"n": len(p)}
            continue
        items = [ds[i] for i in range(len(ds))]  # predict() visits rows in sampler order: realign by key
        times = ds.prediction_times
        order = {(int(ds.subject_ids[i]), str(times[i] if times else i)): i for i in range(len(ds))}
        idx = [order[(int(s), str(t.to_pydatetime()))]
               for s, t in zip(p["subject_id"], p["prediction_time"], strict=True)]
        acc: dict[str, list[Any]]
        if spec.kind == "binary":
            acc = {"y": [items[i]["label"] for i in idx], "score": list(p["prob"])}
        elif spec.kind == "tte":
            acc = {"y": [items[i]["event"] for i in idx], "dur": [items[i]["duration_days"] for i in idx],
                   "score": list(p["risk"])}
        else:
            hits = [len(set(c) & {vocab.token(int(j)) for j in targets}) / len(targets)
                    for i, c in zip(idx, p["topk_codes"], strict=True)
                    if (targets := items[i]["target_ids"] or [])]
            out[spec.task] = {"n": len(p), f"recall_at_{topk}": float(np.mean(hits))}
            continue
        out[spec.task] = {"n": len(p), "positives": int(np.nansum(acc["y"])), **task_metrics(spec.kind, acc)}
    return out


def fit_calibration(fm: FinetunedModel, tokens_dir: str | Path, cfg: CalibrationConfig, split: str,
                    max_tokens: int, max_len: int | None = None) -> Calibration | None:
    """Each task's calibration from the raw head outputs on the ``split`` rows (the tuning split) and their
    labels; None with ``method: none``. Tasks without rows there stay uncalibrated."""
    if cfg.method == "none":
        return None
    import torch

    out: dict[str, TaskCalibration] = {}
    mask = code_mask(fm.vocab)
    for spec in fm.specs:
        heads: list[np.ndarray] = []
        items: list[dict[str, Any]] = []
        for ds, idx, batch in task_batches(fm, tokens_dir, spec.task, split, max_tokens, max_len):
            raw = head_output(fm, spec, batch)
            if spec.kind == "binary":
                heads.append(torch.sigmoid(raw).double().cpu().numpy())
            elif spec.kind == "tte":
                heads.append(survival_curve(raw).double().cpu().numpy())
            else:
                heads.append(raw[:, mask.to(raw.device)].double().cpu().numpy())
            items.extend(ds[i] for i in idx)
        if not items:
            continue
        scores = np.concatenate(heads)
        groups = np.asarray([int(it["subject_id"]) for it in items])
        if spec.kind == "binary":
            y = np.asarray([it["label"] for it in items], dtype=float)
            out[spec.task] = fit_binary(spec.task, scores, y, groups, cfg.method, cfg.min_positives,
                                        cfg.folds, cfg.seed)
        elif spec.kind == "tte":
            ev = np.asarray([it["event"] for it in items], dtype=float)
            dur = np.asarray([it["duration_days"] for it in items], dtype=float)
            out[spec.task] = fit_tte(spec.task, scores, spec.edges_days, ev, dur, groups, cfg.method,
                                     cfg.folds, cfg.seed)
        elif fm.rollout_steps == 0:  # a rollout's scores are not one softmax (see ehrfm.train.calibration)
            col = np.full(len(fm.vocab), -1)
            col[mask.numpy()] = np.arange(int(mask.sum()))
            targets = [col[np.asarray(it["target_ids"] or [], dtype=int)] for it in items]
            out[spec.task] = fit_temperature(spec.task, scores, [t[t >= 0] for t in targets])
    return Calibration(out)
