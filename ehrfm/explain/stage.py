"""``ehrfm explain`` stage: ``run(ExplainConfig, Layout) -> ExplainSummary``.

Reads a finetuned model (``model`` or the layout's finetuning run) and its task rows of ``split`` from the
layout's tokens; explains at most ``max_rows`` rows per task (:func:`ehrfm.explain.explainer.explain_rows`)
and writes ``layout.explanations_dir``: ``event_attributions.parquet`` (one row per explained item),
``attributions.md`` and ``attributions.json`` (top codes with CIs and the completeness check per task; the
completion marker, written last).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ehrfm.config.base import ConfigError
from ehrfm.config.explain import ExplainConfig, ExplainSummary, TaskExplainSummary
from ehrfm.layout import Layout


def run(cfg: ExplainConfig, layout: Layout) -> ExplainSummary:
    """Explain the held-out rows of every requested task into ``layout.explanations_dir``."""
    import numpy as np
    import pandas as pd
    from tqdm import tqdm

    from ehrfm.atomic import folder_outputs
    from ehrfm.data import TokenStreamDataset
    from ehrfm.explain.aggregate import events_frame
    from ehrfm.explain.explainer import explain_rows
    from ehrfm.explain.ig import TARGETS
    from ehrfm.explain.population import completeness, markdown, top_codes
    from ehrfm.train.predict import FinetunedModel

    t0 = time.perf_counter()
    model_dir = Path(cfg.model) if cfg.model else layout.finetune_run.model
    fm = FinetunedModel.load(model_dir)
    tasks = list(cfg.tasks) or [s.task for s in fm.specs if s.kind in TARGETS]
    for t in tasks:
        spec = next((s for s in fm.specs if s.task == t), None)
        if spec is None or spec.kind not in TARGETS:
            raise ConfigError(f"tasks={tasks}: {t!r} is not a binary or time-to-event task of the model "
                              f"(explainable: {[s.task for s in fm.specs if s.kind in TARGETS]})")
    descriptions = _descriptions(layout)
    frames: list[pd.DataFrame] = []
    result_tasks: dict[str, Any] = {}
    summaries: list[TaskExplainSummary] = []
    for task in tasks:
        spec = next(s for s in fm.specs if s.task == task)
        folder = layout.token_paths.task(task)
        if not folder.exists():
            raise FileNotFoundError(f"{folder}: no task rows for {task!r} (run `ehrfm tokenize` with labels)")
        ds = TokenStreamDataset(folder, split=cfg.split, task=task)
        picked = np.arange(len(ds))
        if len(ds) > cfg.max_rows:
            picked = np.sort(np.random.default_rng(cfg.seed).choice(len(ds), cfg.max_rows, replace=False))
        rows = [ds[int(i)] for i in picked]
        explained, task_frames = [], []
        step = 64  # rows per call: a progress bar that moves, batches still formed within each call
        for k in tqdm(range(0, len(rows), step), desc=f"explain {task}", disable=not cfg.progress,
                      leave=False):
            explained += explain_rows(fm, spec, rows[k : k + step], cfg.ig)
        assert ds.prediction_times is not None
        for j, (i, ex) in enumerate(zip(picked.tolist(), explained, strict=True)):
            f = events_frame(ex.events)
            f.insert(0, "row", j)
            f.insert(0, "prediction_time", pd.Timestamp(ds.prediction_times[i]))
            f.insert(0, "subject_id", int(ds.subject_ids[i]))
            f.insert(0, "task", task)
            task_frames.append(f.assign(f_input=ex.f_input, rel_error=ex.rel_error))
        frames += task_frames
        items = pd.concat(task_frames, ignore_index=True) if task_frames else pd.DataFrame(
            columns=["row", "subject_id", "code", "kind", "attribution"])
        top = top_codes(items, cfg.top_k, cfg.n_boot, cfg.seed, descriptions)
        comp = completeness([e.rel_error for e in explained], [e.converged for e in explained],
                            [e.steps for e in explained])
        result_tasks[task] = {"target": TARGETS[spec.kind], "completeness": comp, "top_codes": top}
        summaries.append(TaskExplainSummary(task, len(explained), int(comp.get("converged", 0)),
                                            float(comp.get("max_rel_error", 0.0)), [r["code"] for r in top]))
    seconds = round(time.perf_counter() - t0, 1)
    result = {"model": str(model_dir), "split": cfg.split, "n_boot": cfg.n_boot,
              "tolerance": cfg.ig.tolerance, "config": cfg.to_dict(), "tasks": result_tasks,
              "seconds": seconds}
    out = layout.explanations_dir
    with folder_outputs(out, layout.explain_json.name, overwrite=cfg.overwrite, key="explanations") as staged:
        where = Path(staged.path())
        where.mkdir(parents=True, exist_ok=True)
        events = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        events.to_parquet(where / layout.explain_events.name, index=False)
        (where / layout.explain_md.name).write_text(markdown(result))
        (where / layout.explain_json.name).write_text(json.dumps(result, indent=2, default=_json_default))
        staged.publish()
    for s in summaries:
        print(f"{s.task}: {s.rows} rows, {s.converged} within the completeness tolerance; top codes: "
              f"{', '.join(s.top_codes[:5])}")
    print(f"attributions: {layout.explain_md}")
    return ExplainSummary(json=str(layout.explain_json), markdown=str(layout.explain_md),
                          events=str(layout.explain_events), tasks=summaries, seconds=seconds)


def _descriptions(layout: Layout) -> dict[str, str]:
    """code -> description from the MEDS ``metadata/codes.parquet`` (empty when absent)."""
    import pyarrow.parquet as pq

    path = layout.meds_paths.codes
    if not path.exists():
        return {}
    table = pq.read_table(path, columns=["code", "description"]).to_pydict()
    return {c: d for c, d in zip(table["code"], table["description"], strict=True) if d}


def _json_default(v: Any) -> Any:
    return str(v)
