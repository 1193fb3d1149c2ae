"""``ehrfm simulate``: ``run(SimulateConfig, Layout) -> SimulateSummary``.

Reads the pretrained model (``<runs>/pretrain/model``: no finetuning, no heads, no prompt tokens), the task
rows of ``layout.token_paths`` and the task specifications; fits the within-visit clock and value tables on
the train split's pretraining rows (:class:`~ehrfm.simulate.clock.StreamTables`: nothing of a tuning or
held-out patient is read but that patient's own rows up to prediction time); simulates M futures per row and
writes ``<runs>/simulate/<model_name>/``::

    predictions.parquet   one row per (task, subject_id, prediction_time) of the simulated splits, in the
                          ehrfm.evaluate contract (binary: prob; time-to-event: risk, survival, times_days),
                          model = zero_shot_m<M>, plus the Monte-Carlo interval and the future counts
    run_config.yaml       the stage config
    summary.json          SimulateSummary, written last (``ehrfm evaluate`` picks up finished runs only)
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ehrfm.config.base import ConfigError
from ehrfm.config.simulate import SimulateConfig, SimulatedTask, SimulateSummary
from ehrfm.data import TokenStreamDataset
from ehrfm.data.collate import Collator
from ehrfm.devices import resolve_device, to_device
from ehrfm.labels.parse import load_task
from ehrfm.layout import Layout
from ehrfm.models import EHRFoundationModel
from ehrfm.schema import PREDICTION_TIME, SUBJECT_ID, TRAIN_SPLIT
from ehrfm.simulate.clock import StreamTables
from ehrfm.simulate.estimate import binary_columns, tte_columns
from ehrfm.simulate.futures import Settings, TokenInfo, simulate_rows, strip_prompt
from ehrfm.simulate.rules import OutcomeRule, UnsupportedTaskError
from ehrfm.vocab import Vocabulary

US_PER_DAY = 86_400_000_000


def run(cfg: SimulateConfig, layout: Layout) -> SimulateSummary:
    """Simulate every selected task into ``layout.simulate_run(cfg.name)``; print and return the summary."""
    t0 = time.time()
    tokens = layout.token_paths
    model_dir = Path(cfg.pretrained) if cfg.pretrained else layout.pretrain_run.model
    if not (model_dir / "model.pt").exists():
        raise FileNotFoundError(f"pretrained={model_dir}: no model.pt (run `ehrfm pretrain` first)")
    vocab = Vocabulary.load(model_dir / "vocab.json" if (model_dir / "vocab.json").exists() else tokens.vocab)
    if Vocabulary.load(tokens.vocab).tokens != vocab.tokens:
        raise ConfigError(f"tokens={tokens.root}: vocab.json differs from the pretrained model's "
                          f"({model_dir})")
    device = resolve_device(cfg.device, "device")
    model = EHRFoundationModel.from_pretrained(model_dir, map_location=device).to(device).eval()
    rules, skipped = _rules(cfg, layout, vocab, device)
    train = TokenStreamDataset(tokens.pretrain, split=TRAIN_SPLIT)
    tables = StreamTables.fit((train[i] for i in range(len(train))), vocab, cfg.gap_quantiles,
                              cfg.gap_min_count).to(device)
    info = TokenInfo.from_vocab(vocab).to(device)
    settings = Settings(cfg.samples, cfg.temperature, cfg.top_p, cfg.max_steps)
    frames, done = [], {}
    for task, rule in rules.items():
        t1 = time.time()
        parts = [_simulate_split(cfg, layout, vocab, model, rule, info, tables, settings, split)
                 for split in cfg.splits]
        frame = pd.concat([p for p in parts if p is not None], ignore_index=True) if any(
            p is not None for p in parts) else None
        if frame is None:
            skipped[task] = f"no task rows in splits {cfg.splits}"
            continue
        seconds = time.time() - t1
        frames.append(frame)
        done[task] = SimulatedTask(rows=len(frame), futures=int(frame["n_futures"].sum()),
                                   truncated=int(frame["n_truncated"].sum()),
                                   mean_steps=float(frame["mean_steps"].mean()), seconds=round(seconds, 2),
                                   seconds_per_row=round(seconds / len(frame), 4))
    if not frames:
        raise ConfigError(f"tasks={cfg.tasks}: nothing to simulate ({skipped or 'no tokenized tasks'})")
    run_paths = layout.simulate_run(cfg.name)
    run_paths.root.mkdir(parents=True, exist_ok=True)
    run_paths.summary.unlink(missing_ok=True)  # evaluate reads finished runs only: summary.json comes last
    preds = pd.concat(frames, ignore_index=True)
    tmp = run_paths.predictions.with_name(f".{run_paths.predictions.name}.{os.getpid()}")
    preds.to_parquet(tmp, index=False)
    os.replace(tmp, run_paths.predictions)
    cfg.save(run_paths.config)
    summary = SimulateSummary(model_name=cfg.name, predictions=str(run_paths.predictions), tasks=done,
                              skipped_tasks=skipped, gap_fit_tokens=tables.fitted_tokens,
                              seconds=round(time.time() - t0, 2))
    summary.save(run_paths.summary)
    for task, s in done.items():
        print(f"simulate {task}: {s.rows} rows x {cfg.samples} futures, {s.truncated} truncated, "
              f"{s.mean_steps:.1f} steps/future, {s.seconds_per_row:.3f} s/row")
    for task, why in skipped.items():
        print(f"simulate {task}: skipped ({why})")
    print(f"predictions: {run_paths.predictions} (model {cfg.name})")
    return summary


def _rules(cfg: SimulateConfig, layout: Layout, vocab: Vocabulary, device: torch.device
           ) -> tuple[dict[str, OutcomeRule], dict[str, str]]:
    """Outcome rules of the selected tasks, and the tokenized tasks skipped with their reason."""
    root = layout.token_paths.tasks
    tokenized = sorted(p.name for p in root.glob("*") if p.is_dir() and not p.name.startswith((".", "_")))
    names = list(cfg.tasks) or tokenized
    missing = [t for t in names if t not in tokenized]
    if missing:
        raise ConfigError(f"tasks={cfg.tasks}: no token rows for {missing} under {root} "
                          f"(tokenized: {tokenized})")
    rules: dict[str, OutcomeRule] = {}
    skipped: dict[str, str] = {}
    for name in names:
        try:
            rules[name] = OutcomeRule.from_spec(load_task(name, cfg.tasks_dir), vocab).to(device)
        except UnsupportedTaskError as exc:
            if cfg.tasks:  # asked for by name: an error, not a silent skip
                raise ConfigError(f"tasks: {exc}") from exc
            skipped[name] = str(exc)
    return rules, skipped


def _simulate_split(cfg: SimulateConfig, layout: Layout, vocab: Vocabulary, model: EHRFoundationModel,
                    rule: OutcomeRule, info: TokenInfo, tables: StreamTables, settings: Settings,
                    split: str) -> pd.DataFrame | None:
    """Prediction rows of one task and split (None without rows)."""
    ds = TokenStreamDataset(layout.token_paths.task(rule.task), split=split, task=rule.task)
    if len(ds) == 0:
        return None
    rows = np.arange(len(ds))
    if cfg.max_rows and len(rows) > cfg.max_rows:
        rows = np.sort(np.random.default_rng(cfg.seed).choice(rows, cfg.max_rows, replace=False))
    rows = rows[np.argsort(ds.lengths[rows], kind="stable")]  # similar lengths together: less prefill padding
    per_batch = 1 if model.config.backbone == "transformer" else cfg.rows_per_batch
    batches = [rows[i : i + per_batch] for i in range(0, len(rows), per_batch)]
    assert ds.prediction_times is not None
    pts = pd.to_datetime(pd.Series(ds.prediction_times)).to_numpy(dtype="datetime64[us]").astype(np.int64)
    collate = Collator()
    device = next(model.parameters()).device
    cols: dict[str, list[Any]] = {SUBJECT_ID: [], PREDICTION_TIME: []}
    desc = f"simulate {rule.task}/{split} (M={settings.samples})"
    for b, idx in enumerate(tqdm(batches, desc=desc, disable=not cfg.progress, leave=False)):
        items = [ds[int(i)] for i in idx]
        batch = strip_prompt(collate(items), vocab, rule.task, [it["subject_id"] for it in items])
        batch = to_device(batch, device)
        # one generator per batch, seeded from (seed, split, batch): reproducible for the same settings
        gen = torch.Generator(device=device).manual_seed(_batch_seed(cfg.seed, rule.task, split, b))
        pred_days = torch.from_numpy(pts[idx] / US_PER_DAY).to(device)
        out = simulate_rows(model, batch, pred_days, rule, info, tables, settings, gen)
        horizon = rule.horizon_days
        part = (binary_columns(out, cfg.truncated, cfg.ci_level) if rule.kind == "binary" or horizon is None
                else tte_columns(out, horizon, cfg.truncated, cfg.ci_level))
        for k, v in part.items():
            cols.setdefault(k, []).extend(v)
        cols[SUBJECT_ID].extend(int(ds.subject_ids[i]) for i in idx)
        cols[PREDICTION_TIME].extend(pd.Timestamp(int(pts[i]), unit="us") for i in idx)
    df = pd.DataFrame(cols)
    df[SUBJECT_ID] = df[SUBJECT_ID].astype("int64")
    df[PREDICTION_TIME] = pd.to_datetime(df[PREDICTION_TIME])
    df.insert(2, "task", rule.task)
    df.insert(3, "split", split)
    df.insert(4, "model", cfg.name)
    return df


def _batch_seed(seed: int, task: str, split: str, batch: int) -> int:
    """A stable 63-bit seed per (seed, task, split, batch) (the str ``hash`` is salted per process)."""
    digest = hashlib.sha256(f"{seed}/{task}/{split}/{batch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
