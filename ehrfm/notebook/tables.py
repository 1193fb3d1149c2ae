"""Readable tables over the pipeline's outputs: decoded token rows, sequence and code statistics, label
prevalence per split. Pandas only (no torch, no Spark), so notebook 02 stays light."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ehrfm.evaluate.data import attach_split, load_labels, load_splits, task_kind
from ehrfm.layout import TokenPaths
from ehrfm.schema import TOKEN_STREAMS, TokenType
from ehrfm.tokenize.direct import read_tokens
from ehrfm.vocab import Vocabulary

TYPE_NAMES = {v: k for k, v in vars(TokenType).items() if k.isupper() and isinstance(v, int) and k != "COUNT"}
STREAMS = TOKEN_STREAMS


def load_token_rows(tokens_dir: str | Path, task: str | None = None) -> pd.DataFrame:
    """Token rows as a DataFrame (TOKENS_SCHEMA columns): pretraining rows, or one task's rows."""
    base = TokenPaths(Path(tokens_dir))
    folder = base.pretrain if task is None else base.task(task)
    if not folder.exists():
        raise FileNotFoundError(f"{folder} not found: run `ehrfm tokenize` (task rows need --labels)")
    frame: pd.DataFrame = read_tokens(folder).to_pandas()
    return frame


def decode_row(row: Mapping[str, Any], vocab: Vocabulary) -> pd.DataFrame:
    """One token row as a table: position, token (decoded id), type, age, date, visit order and segment.

    ``row`` has the parallel streams (as in TOKENS_SCHEMA); times are days since 1970-01-01.
    """
    ids = np.asarray(row["concept_ids"], dtype=np.int64)
    days = np.asarray(row["times"], dtype=np.float64)
    return pd.DataFrame({
        "position": np.arange(len(ids)),
        "concept_id": ids,
        "token": [vocab.token(int(i)) for i in ids],
        "type": [TYPE_NAMES.get(int(t), str(t)) for t in row["type_ids"]],
        "age_years": np.round(np.asarray(row["ages"], dtype=np.float64), 2),
        "date": pd.to_datetime(days, unit="D").floor("min"),
        "visit_order": np.asarray(row["visit_orders"], dtype=np.int64),
        "visit_segment": np.asarray(row["visit_segments"], dtype=np.int64),
    })


def length_stats(rows: pd.DataFrame) -> pd.DataFrame:
    """Sequence length (tokens) and visits per row, summarized per split."""
    visits = rows["visit_orders"].map(lambda v: int(np.max(v)) if len(v) else 0)
    f = rows.assign(visits=visits)
    out = f.groupby("split", sort=True).agg(
        rows=("length", "size"), len_mean=("length", "mean"), len_p50=("length", "median"),
        len_p90=("length", lambda s: float(np.percentile(s, 90))), len_max=("length", "max"),
        visits_mean=("visits", "mean"), visits_max=("visits", "max"),
    )
    return out.round(1).reset_index()


def code_family(token: str) -> str:
    """A token's family: the part before the first ``//`` (DIAGNOSIS, LAB, ...), or the special token kind."""
    if token.startswith("[TASK:"):
        return "TASK"
    if token.startswith("[Q"):
        return "VALUE_BIN"
    if token.startswith(("[W", "[M", "[LT")):
        return "INTERVAL"
    if token.startswith("["):
        return token
    return token.split("//", 1)[0]


def token_counts(rows: pd.DataFrame, vocab: Vocabulary, top: int = 20) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-family counts and share, the ``top`` most frequent clinical codes with rows containing them)."""
    ids = (np.concatenate([np.asarray(v, dtype=np.int64) for v in rows["concept_ids"]]) if len(rows)
           else np.array([], int))
    counts = np.bincount(ids, minlength=len(vocab))
    per_row = np.zeros(len(vocab), dtype=np.int64)
    for v in rows["concept_ids"]:
        per_row[np.unique(np.asarray(v, dtype=np.int64))] += 1
    tok = pd.DataFrame({"token": vocab.tokens, "count": counts, "rows_with": per_row})
    tok = tok[tok["count"] > 0]
    tok["family"] = tok["token"].map(code_family)
    fam = tok.groupby("family")["count"].sum().sort_values(ascending=False).to_frame()
    fam["share"] = (fam["count"] / fam["count"].sum()).round(4)
    clinical = tok[~tok["token"].str.startswith("[")].sort_values("count", ascending=False).head(top)
    return fam.reset_index(), clinical.reset_index(drop=True)


def label_prevalence(labels_dir: str | Path, meds_dir: str | Path) -> pd.DataFrame:
    """Per task and split: kind, label rows, subjects, prevalence (binary) or event rate and median
    duration (time-to-event); forecast tasks report mean target codes per row."""
    splits = load_splits(meds_dir)
    rows: list[dict[str, Any]] = []
    for task, lab in load_labels(labels_dir).items():
        lab = attach_split(lab, splits, task)
        kind = task_kind(lab, task)
        for split, g in lab.groupby("split", sort=True):
            r: dict[str, Any] = {"task": task, "kind": kind, "split": split, "rows": len(g),
                                 "subjects": int(g["subject_id"].nunique())}
            if kind == "binary":
                r["prevalence"] = float(g["boolean_value"].astype(float).mean())
            elif kind == "tte":
                r["event_rate"] = float(g["event"].astype(float).mean())
                r["median_duration_days"] = float(g["duration_days"].median())
            else:
                r["mean_target_codes"] = float(g["target_codes"].map(len).mean())
            rows.append(r)
    return pd.DataFrame(rows).round(3)
