"""Explanations for notebook 06: one patient's prediction explained event by event (aligned to its MEDS
events, so values and units are the recorded ones), per visit, and the population's top codes (torch)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from ehrfm.config.explain import IGSettings
from ehrfm.data import TokenStreamDataset
from ehrfm.explain.aggregate import align_events
from ehrfm.explain.explainer import RowExplanation, explain_rows, kept_row
from ehrfm.layout import Layout
from ehrfm.schema import EVENT_COLUMNS, SUBJECT_ID, TIME
from ehrfm.tokenize.meta import read_tokenizer_config
from ehrfm.train.predict import FinetunedModel


def subject_events(layout: Layout, subject_id: int) -> pd.DataFrame:
    """One subject's MEDS events (EVENTS_SCHEMA columns present in the data), time-sorted."""
    table = layout.meds_paths.read_table(None, pc.field(SUBJECT_ID) == subject_id)
    events: pd.DataFrame = table.to_pandas()
    cols = [c for c in EVENT_COLUMNS if c in events.columns]
    out: pd.DataFrame = events[cols].sort_values(TIME, na_position="first", kind="stable")
    return out.reset_index(drop=True)


def pick_row(ds: TokenStreamDataset) -> int:
    """A row worth explaining: the longest row with a positive label (else the longest row)."""
    labels = np.array([ds[i]["label"] == 1 for i in range(len(ds))])
    lengths = ds.lengths.astype(float) + 1e9 * labels  # positives first, then by length
    return int(np.argmax(lengths))


def explain_patient(layout: Layout, task: str, index: int | None = None, split: str = "held_out",
                    settings: IGSettings | None = None) -> tuple[RowExplanation, dict[str, Any]]:
    """Explain one ``task`` row of ``split`` (``index``: default :func:`pick_row`) with the layout's finetuned
    model, its events aligned to the subject's MEDS events. Returns the explanation and the row's facts
    (subject_id, prediction_time, label, events frame)."""
    fm = FinetunedModel.load(layout.finetune_run.model)
    spec = next(s for s in fm.specs if s.task == task)
    ds = TokenStreamDataset(layout.token_paths.task(task), split=split, task=task)
    if len(ds) == 0:
        raise ValueError(f"no {task} rows in split {split}")
    i = pick_row(ds) if index is None else index
    row = ds[i]
    assert ds.prediction_times is not None
    when = pd.Timestamp(ds.prediction_times[i])
    sid = int(ds.subject_ids[i])
    events = subject_events(layout, sid)
    cfg = settings or IGSettings()
    sources = align_events(kept_row(row, cfg.max_tokens), events, fm.vocab,
                           read_tokenizer_config(layout.token_paths.root), when)
    ex = explain_rows(fm, spec, [row], cfg, [sources], [events])[0]
    return ex, {"subject_id": sid, "prediction_time": when, "label": row["label"], "events": events}


def top_table(ex: RowExplanation, k: int = 10, descriptions: dict[str, str] | None = None) -> pd.DataFrame:
    """The ``k`` events with the largest |attribution|: rank, code, description, time, value, unit,
    attribution and the one-line text."""
    return pd.DataFrame([{"rank": r, "code": e.code, "description": (descriptions or {}).get(e.code),
                          "time": e.time, "value": e.value, "unit": e.unit,
                          "attribution": round(e.attribution, 4), "text": e.describe(descriptions)}
                         for r, e in enumerate(ex.top(k), 1)])


def visit_table(ex: RowExplanation) -> pd.DataFrame:
    """Attribution per visit (0 = the static block): start, end, events, sum, top code."""
    return pd.DataFrame([vars(v) for v in ex.visits()])


def code_descriptions(layout: Layout) -> dict[str, str]:
    """code -> description from the MEDS metadata (empty when absent)."""
    path = layout.meds_paths.codes
    if not path.exists():
        return {}
    codes = pd.read_parquet(path, columns=["code", "description"]).dropna()
    return dict(zip(codes["code"], codes["description"], strict=True))


def population_table(attributions_json: str | Path, task: str) -> pd.DataFrame:
    """The top codes of ``task`` from ``attributions.json`` (``ehrfm explain``): code, kind, mean
    |attribution| with its 95% CI, signed mean, share of rows holding the code."""
    import json

    result = json.loads(Path(attributions_json).read_text())
    rows = result["tasks"][task]["top_codes"]
    return pd.DataFrame([{"code": r["code"], "description": r["description"], "kind": r["kind"],
                          "mean_abs": r["mean_abs"]["value"], "ci_low": r["mean_abs"]["ci_low"],
                          "ci_high": r["mean_abs"]["ci_high"], "mean_signed": r["mean_signed"],
                          "share_rows": r["share_rows"]} for r in rows])
