"""The direct (no Spark) path over many subjects, MEDS reading helpers and the label summary."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrfm import storage
from ehrfm.labels.engine import label_subject_rows, rows_to_arrow
from ehrfm.labels.spec import TaskSpec

# the label tables' reader lives with their writer; re-exported here, where callers found it
from ehrfm.labels.tables import read_labels, sort_labels
from ehrfm.layout import MEDS_CODES, MEDS_SUBJECT_SPLITS, MedsPaths
from ehrfm.meds_files import read_meds_table
from ehrfm.schema import CODE, ENCOUNTER_ID, SUBJECT_ID, TIME

ENGINE_COLUMNS = [SUBJECT_ID, TIME, CODE, ENCOUNTER_ID]
__all__ = ["label_events", "read_labels", "read_meds_events", "read_splits", "sort_labels", "summarize"]
SUMMARY_COLUMNS = ("task", "kind", "split", "rows", "subjects", "positives", "prevalence")


def read_meds_events(meds_dir: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read the events of ``<meds_dir>/data/`` (either layout: ``<split>/<n>.parquet`` or flat) into pandas
    (default columns: those the engine reads)."""
    meds = MedsPaths(Path(meds_dir))
    if not meds.data.is_dir():
        raise FileNotFoundError(f"{meds_dir}: no data/ folder (expected an ingested MEDS dataset)")
    table = meds.read_table(columns or ENGINE_COLUMNS)
    frame: pd.DataFrame = table.to_pandas()
    return frame


def label_events(events: pd.DataFrame, specs: Iterable[TaskSpec]) -> dict[str, pa.Table]:
    """Run :func:`~ehrfm.labels.engine.label_subject` over every subject of ``events`` (no Spark).

    Returns ``{task name: pa.Table in LABELS_SCHEMA}`` sorted by (subject_id, prediction_time).
    """
    specs = list(specs)
    rows: dict[str, list[dict[str, object]]] = {s.name: [] for s in specs}
    for _, group in events.groupby(SUBJECT_ID, sort=True):
        for name, subject_rows in label_subject_rows(group, specs).items():
            rows[name].extend(subject_rows)
    return {name: sort_labels(rows_to_arrow(r)) for name, r in rows.items()}


def read_splits(meds_dir: str | Path) -> pd.DataFrame | None:
    """The subject splits of a MEDS dataset (:attr:`MedsPaths.subject_splits`) as (subject_id, split), or None
    when absent."""
    path = storage.join(storage.normalize(str(meds_dir)), MEDS_SUBJECT_SPLITS)  # a local path or URI
    if not storage.exists(path):
        return None
    fs, inner = storage.filesystem(path)
    splits: pd.DataFrame = pq.read_table(inner, filesystem=fs).to_pandas()
    return splits


def summarize(tables: Mapping[str, pa.Table], kinds: Mapping[str, str],
              splits: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (task, split): rows, subjects, positives and prevalence (events for time-to-event;
    mean number of target codes for forecasts). ``split`` "all" sums the splits."""
    out = []
    for name, table in tables.items():
        df = table.select([SUBJECT_ID, "boolean_value", "event", "target_codes"]).to_pandas()
        df["split"] = "all" if splits is None else df[SUBJECT_ID].map(splits.set_index(SUBJECT_ID)["split"])
        df["split"] = df["split"].fillna("unassigned")
        groups = [("all", df)] + ([] if splits is None else list(df.groupby("split", sort=True)))
        for split, g in groups:
            kind = kinds[name]
            if kind == "binary":
                pos = int(g["boolean_value"].fillna(False).astype(bool).sum())
            elif kind == "time_to_event":
                pos = int(g["event"].fillna(0).astype(int).sum())
            else:
                pos = int(g["target_codes"].map(lambda v: len(v) if v is not None else 0).sum())
            n = len(g)
            out.append({"task": name, "kind": kind, "split": split, "rows": n,
                        "subjects": int(g[SUBJECT_ID].nunique()), "positives": pos,
                        "prevalence": (pos / n) if n else float("nan")})
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))


def dataset_codes(meds_dir: str | Path) -> list[str]:
    """Distinct codes of a dataset: its codes metadata (:attr:`MedsPaths.codes`) when present, else a scan of
    data/ (a local path or URI)."""
    codes = storage.join(storage.normalize(str(meds_dir)), MEDS_CODES)
    if storage.exists(codes):
        fs, inner = storage.filesystem(codes)
        return [str(c) for c in pq.read_table(inner, columns=[CODE], filesystem=fs).column(CODE).to_pylist()]
    table = read_meds_table(str(meds_dir), [CODE])
    return [str(c) for c in pc.unique(table.column(CODE)).to_pylist()]
