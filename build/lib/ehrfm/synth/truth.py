"""The truth table written beside a synthetic population, and the oracle AUROC computed from it.

``truth/index_events.parquet``: one row per index event (TRUTH_SCHEMA). ``true_prob`` is the planted
probability the outcome was sampled from, so AUROC(true_prob, outcome) is the best any model of the
data can expect (up to sampling noise): the yardstick for a trained model on the same events.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ehrfm.layout import SYNTH_TRUTH
from ehrfm.synth.record import TruthRow

TRUTH_FILE = Path(SYNTH_TRUTH)
TRUTH_SCHEMA = pa.schema(
    [
        pa.field("patient_id", pa.string(), nullable=False),  # FHIR Patient.id
        pa.field("subject_id", pa.int64(), nullable=False),  # = int(patient_id), the MEDS subject_id
        pa.field("task", pa.string(), nullable=False),
        pa.field("prediction_time", pa.timestamp("us"), nullable=False),  # UTC, naive
        pa.field("true_prob", pa.float64(), nullable=False),
        pa.field("outcome", pa.int8(), nullable=False),
        pa.field("encounter_id", pa.string(), nullable=False),  # FHIR Encounter.id of the index stay
    ]
)


def truth_table(rows: list[tuple[str, TruthRow]]) -> pa.Table:
    """(patient id, truth row) pairs as a TRUTH_SCHEMA table, in the given order."""
    return pa.table(
        {
            "patient_id": [pid for pid, _ in rows],
            # Patient ids are decimal integers, so the CONVENTIONS.md rule gives subject_id = int(id)
            "subject_id": np.array([int(pid) for pid, _ in rows], dtype=np.int64),
            "task": [t.task for _, t in rows],
            "prediction_time": pa.array(
                np.array([t.prediction_time for _, t in rows], dtype="int64") * 1_000_000,
                type=pa.timestamp("us")),
            "true_prob": np.array([t.true_prob for _, t in rows], dtype=np.float64),
            "outcome": np.array([t.outcome for _, t in rows], dtype=np.int8),
            "encounter_id": [t.encounter_id for _, t in rows],
        },
        schema=TRUTH_SCHEMA,
    )


def read_truth(path: str | Path) -> pd.DataFrame:
    """Read the truth table of a population folder (or the parquet file itself) into pandas."""
    p = Path(path)
    if p.is_dir():
        p = p / TRUTH_FILE
    if not p.exists():
        raise FileNotFoundError(f"no truth table at {p} (generate the population with `ehrfm synth`)")
    df: pd.DataFrame = pq.read_table(p).to_pandas()
    return df


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN with one class only.

    ``y``: (n,) 0/1 outcomes; ``score``: (n,) higher = more likely positive.
    """
    y = np.asarray(y).astype(bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(y.size, dtype=np.float64)
    s = score[order]
    # average ranks over ties
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks[order] = np.repeat(avg, ends - starts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def oracle_auroc(truth: pd.DataFrame | str | Path, task: str) -> float:
    """AUROC of the planted ``true_prob`` against the realised ``outcome`` for ``task``.

    ``truth`` is a DataFrame from :func:`read_truth` or a population folder / parquet path.
    """
    df = truth if isinstance(truth, pd.DataFrame) else read_truth(truth)
    sub = df[df["task"] == task]
    if sub.empty:
        raise ValueError(f"no index events for task {task!r} (tasks present: {sorted(df['task'].unique())})")
    return auroc(sub["outcome"].to_numpy(), sub["true_prob"].to_numpy())
