"""Reading labels, splits, predictions and MEDS events for evaluation; task-kind detection; validation."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, cast

import pandas as pd
import pyarrow.compute as pc

from ehrfm.labels.tables import task_frames
from ehrfm.layout import MedsPaths
from ehrfm.schema import PREDICTION_TIME, SUBJECT_ID

TaskKind = Literal["binary", "tte", "forecast"]
KEY = [SUBJECT_ID, PREDICTION_TIME]
PRED_REQUIRED = [SUBJECT_ID, PREDICTION_TIME, "task", "split", "model"]


def task_kind(labels: pd.DataFrame, task: str = "?") -> TaskKind:
    """binary (``boolean_value``), tte (``duration_days`` + ``event``) or forecast (``target_codes``)."""
    def has(col: str) -> bool:
        return col in labels.columns and bool(labels[col].notna().any())

    if has("duration_days") and has("event"):
        return "tte"
    if has("target_codes"):
        return "forecast"
    if has("boolean_value"):
        return "binary"
    raise ValueError(f"labels of task {task!r}: no boolean_value, duration_days+event or target_codes values")


def load_labels(labels_dir: str | Path, tasks: list[str] | None = None) -> dict[str, pd.DataFrame]:
    """task -> label DataFrame (LABELS_SCHEMA columns) of ``<labels_dir>/<task>.parquet`` and its sidecar,
    read by :func:`ehrfm.labels.tables.task_frames` (default: every task in the folder)."""
    out = task_frames(labels_dir, tasks)
    for df in out.values():
        df[PREDICTION_TIME] = pd.to_datetime(df[PREDICTION_TIME])
    return out


def load_splits(meds_dir: str | Path) -> pd.DataFrame:
    """``<meds>/metadata/subject_splits.parquet`` -> DataFrame(subject_id, split)."""
    path = MedsPaths(Path(meds_dir)).subject_splits
    if not path.exists():
        raise FileNotFoundError(f"subject splits not found: {path}")
    return pd.read_parquet(path, columns=[SUBJECT_ID, "split"])


def attach_split(labels: pd.DataFrame, splits: pd.DataFrame, task: str = "?") -> pd.DataFrame:
    """Labels with a ``split`` column from the subject splits; a subject without a split is an error."""
    df = labels.drop(columns=["split"], errors="ignore").merge(splits, on=SUBJECT_ID, how="left")
    missing = df[df["split"].isna()]
    if len(missing):
        raise ValueError(
            f"labels of task {task!r}: subject_id {int(missing[SUBJECT_ID].iloc[0])} has no split "
            f"in subject_splits.parquet ({len(missing)} rows)"
        )
    return df


def load_events(meds_dir: str | Path, columns: list[str] | None = None,
                code_prefixes: list[str] | None = None) -> pd.DataFrame:
    """MEDS events from ``<meds>/data/`` in either layout (optionally only codes starting with given
    prefixes)."""
    meds = MedsPaths(Path(meds_dir))
    if not meds.data.is_dir():
        raise FileNotFoundError(f"MEDS data directory not found: {meds.data}")
    cols = columns or [SUBJECT_ID, "time", "code", "numeric_value"]
    flt = None
    if code_prefixes:
        code = pc.field("code")
        for pre in code_prefixes:
            cond = pc.starts_with(code, pre) if pre.endswith("//") else (code == pre)
            flt = cond if flt is None else (flt | cond)
    df = meds.read_table(cols, flt).to_pandas()
    df["time"] = pd.to_datetime(df["time"])
    return cast(pd.DataFrame, df)


def validate_predictions(pred: pd.DataFrame) -> pd.DataFrame:
    """Check the predictions contract (see ``ehrfm.evaluate``); returns a copy with typed key columns."""
    for col in PRED_REQUIRED:
        if col not in pred.columns:
            raise ValueError(f"predictions: missing required column {col!r} (have {list(pred.columns)})")
    if not any(c in pred.columns for c in ("prob", "risk", "survival", "topk_codes")):
        raise ValueError("predictions: need one of 'prob', 'risk', 'survival'+'times_days', 'topk_codes'")
    if "survival" in pred.columns and "times_days" not in pred.columns:
        raise ValueError("predictions: column 'survival' needs 'times_days' (the grid of S(t))")
    out = pred.copy()
    out[SUBJECT_ID] = out[SUBJECT_ID].astype("int64")
    out[PREDICTION_TIME] = pd.to_datetime(out[PREDICTION_TIME])
    dup = out.duplicated(["model", "task", *KEY])
    if dup.any():
        r = out[dup].iloc[0]
        raise ValueError(
            f"predictions: duplicate row for model {r['model']!r}, task {r['task']!r}, "
            f"subject_id {r[SUBJECT_ID]}, prediction_time {r[PREDICTION_TIME]}"
        )
    return out
