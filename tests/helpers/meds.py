"""Hand-made pipeline folders for tests: a MEDS dataset and label tables, written where the Layout says."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ehrfm.layout import Layout, MedsPaths
from ehrfm.schema import EVENTS_SCHEMA, LABELS_SCHEMA, SPLITS_SCHEMA


def write_meds(root: Path, events: pd.DataFrame, splits: pd.DataFrame) -> Path:
    """A minimal MEDS dataset folder at ``root``: ``events`` (EVENTS_SCHEMA columns; text_value, unit and
    source are filled in) as one flat ``data/part-0.parquet`` and ``splits`` (subject_id, split) as the
    subject splits. Flat on purpose: the layout older ehrfm versions and other tools write, which every reader
    still takes (``ehrfm ingest`` writes ``data/<split>/<n>.parquet``; tests/test_meds_files.py runs the
    readers on both)."""
    meds = MedsPaths(root)
    meds.data.mkdir(parents=True)
    meds.metadata.mkdir()
    ev = events.assign(text_value=None, unit=None, source="test")[EVENTS_SCHEMA.names]
    pq.write_table(pa.Table.from_pandas(ev, schema=EVENTS_SCHEMA, preserve_index=False),
                   meds.data / "part-0.parquet")
    pq.write_table(pa.Table.from_pandas(splits, schema=SPLITS_SCHEMA, preserve_index=False),
                   meds.subject_splits)
    return root


def write_labels(root: Path, labels: pd.DataFrame) -> Path:
    """One label table per task of ``labels`` (LABELS_SCHEMA columns plus ``task``) in the labels folder
    ``root``."""
    root.mkdir(parents=True)
    for task, g in labels.groupby("task"):
        df = g.drop(columns="task").reindex(columns=LABELS_SCHEMA.names)
        pq.write_table(pa.Table.from_pandas(df, schema=LABELS_SCHEMA, preserve_index=False),
                       Layout(labels=str(root)).label_table(str(task)))
    return root
