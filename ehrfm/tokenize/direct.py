"""The one-process population path (no Spark): the same :func:`tokenize_subject` called per subject,
plus reading/writing helpers and the summary table both engines print."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from ehrfm.config.tokenize import TokenizerConfig
from ehrfm.labels.tables import tasks_frame
from ehrfm.layout import TOKENS_PRETRAIN, TOKENS_TASKS
from ehrfm.prepare.bins import Bins
from ehrfm.schema import SUBJECT_ID, TOKENS_SCHEMA
from ehrfm.tokenize.tokenizer import tokenize_subject
from ehrfm.vocab import Vocabulary


def read_label_tables(labels_dir: str | Path, tasks: Sequence[str]) -> pd.DataFrame:
    """The label tables of ``tasks`` as one DataFrame with a ``task`` column
    (:func:`ehrfm.labels.tables.tasks_frame`: MEDS label files with their sidecars, ACES label files, older
    ehrfm folders)."""
    return tasks_frame(labels_dir, tasks)


def iter_rows(
    events: pd.DataFrame,
    labels: pd.DataFrame | None,
    splits: Mapping[int, str] | None,
    vocab: Vocabulary,
    bins: Bins,
    cfg: TokenizerConfig,
    *,
    pretrain: bool = True,
    progress: bool = False,
) -> Iterator[dict[str, Any]]:
    """Token rows of every subject in ``events`` ∪ ``labels`` (subject order ascending)."""
    ev_groups: dict[int, pd.DataFrame] = {int(k): g for k, g in events.groupby(SUBJECT_ID, sort=False)}  # type: ignore[arg-type]
    lab_groups: dict[int, pd.DataFrame] = {}
    if labels is not None and len(labels):
        lab_groups = {int(k): g for k, g in labels.groupby(SUBJECT_ID, sort=False)}  # type: ignore[arg-type]
    subjects = sorted(set(ev_groups) | set(lab_groups))
    empty = events.iloc[0:0]
    for sid in tqdm(subjects, desc="tokenize", unit="subj", disable=not progress):
        split = splits.get(sid) if splits is not None else None
        yield from tokenize_subject(
            ev_groups.get(sid, empty), vocab, bins, cfg, labels=lab_groups.get(sid), split=split,
            pretrain=pretrain,
        )


def rows_to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """Row dicts → a pyarrow Table in TOKENS_SCHEMA."""
    if not rows:
        return TOKENS_SCHEMA.empty_table()
    cols = {f.name: [r[f.name] for r in rows] for f in TOKENS_SCHEMA}
    return pa.Table.from_pydict(cols, schema=TOKENS_SCHEMA)


def write_local(table: pa.Table, output: str | Path, tasks: Sequence[str], *,
                pretrain: bool = True) -> list[str]:
    """Write ``<output>/pretrain/part-0.parquet`` (unless ``pretrain`` is false: that folder is left alone)
    and ``<output>/tasks/<task>/part-0.parquet``, replacing what they held; ``output``: a local folder or a
    URI (pyarrow's filesystems, :func:`ehrfm.storage.filesystem`). Returns the folders written, in the form
    of ``output``."""
    from ehrfm import storage

    written = []
    base = storage.normalize(str(output))
    task_col = table.column("task").to_numpy(zero_copy_only=False)
    targets = [(TOKENS_PRETRAIN, pd.isna(task_col))] if pretrain else []
    targets += [(f"{TOKENS_TASKS}/{t}", task_col == t) for t in tasks]
    for rel, mask in targets:
        folder = storage.join(base, rel)
        storage.makedirs(folder)
        for old in storage.list_names(folder):
            if old.endswith(".parquet"):
                storage.delete(storage.join(folder, old))
        fs, path = storage.filesystem(storage.join(folder, "part-0.parquet"))
        pq.write_table(table.filter(pa.array(np.asarray(mask, dtype=bool))), path, filesystem=fs)
        written.append(folder)
    return written


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (task, split): rows, label prevalence (mean label), event rate, length p50/p90/p99/max.

    ``frame`` needs columns task, split, length, label, event (one row per token row).
    """
    f = frame.assign(task=frame["task"].fillna("(pretrain)"), split=frame["split"].fillna("(none)"))
    g = f.groupby(["task", "split"], sort=True)
    out = g.agg(
        rows=("length", "size"),
        label_mean=("label", "mean"),
        event_rate=("event", "mean"),
        len_p50=("length", lambda s: float(np.percentile(s, 50))),
        len_p90=("length", lambda s: float(np.percentile(s, 90))),
        len_p99=("length", lambda s: float(np.percentile(s, 99))),
        len_max=("length", "max"),
    )
    return out.reset_index()


def read_tokens(path: str | Path) -> pa.Table:
    """Read token parquet (a folder of ``*.parquet`` as either engine writes, or one file; a local path or
    URI) as TOKENS_SCHEMA.

    Spark names list items ``element`` and drops non-null flags; the cast restores the exact schema.
    """
    from ehrfm import storage

    if storage.is_remote(str(path)):
        uri = storage.normalize(str(path))
        files = ([storage.join(uri, n) for n in storage.list_names(uri) if n.endswith(".parquet")]
                 if storage.is_dir(uri) else [uri])
    else:
        p = Path(storage.local_path(str(path)))  # a file: URI as its path
        files = [str(f) for f in sorted(p.glob("*.parquet"))] if p.is_dir() else [str(p)]
    if not files:
        return TOKENS_SCHEMA.empty_table()
    tables = []
    for f in files:
        fs, inner = storage.filesystem(f)
        tables.append(pq.read_table(inner, filesystem=fs).select(TOKENS_SCHEMA.names).cast(TOKENS_SCHEMA))
    return pa.concat_tables(tables)


def tokens_equal(a: pa.Table, b: pa.Table) -> bool:
    """Whether two token tables hold the same rows in the same order, NaN ``values`` (no value) comparing
    equal to NaN (Arrow's ``Table.equals`` treats NaN != NaN)."""
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    floats = [f.name for f in a.schema
              if pa.types.is_list(f.type) and pa.types.is_floating(f.type.value_type)]
    if not a.drop_columns(floats).equals(b.drop_columns(floats)):
        return False
    for name in floats:
        x, y = a.column(name).combine_chunks(), b.column(name).combine_chunks()
        if not (np.array_equal(x.offsets.to_numpy(), y.offsets.to_numpy())
                and np.array_equal(x.values.to_numpy(zero_copy_only=False),
                                   y.values.to_numpy(zero_copy_only=False),
                                   equal_nan=True)):
            return False
    return True
