"""Torch dataset over token-stream parquet (:data:`ehrfm.schema.TOKENS_SCHEMA`).

Memory-friendly: each list column is kept as one flat numpy array plus row offsets (what Arrow stores),
so a million rows cost their values, not a million Python lists. Items are numpy views.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from torch.utils.data import Dataset

from ehrfm.schema import TOKEN_STREAMS, TOKENS_SCHEMA

LIST_COLUMNS = TOKEN_STREAMS
# Streams added after the first token format: files written before them read as all-NaN (no value anywhere).
OPTIONAL_STREAMS = {"values": float("nan")}
LABEL_COLUMNS = ("label", "duration_days", "event")


def _parquet_files(source: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [source] if isinstance(source, str | Path) else list(source)
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files.extend(sorted(p.rglob("*.parquet")))
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"token-stream parquet not found: {p}")
    if not files:
        raise FileNotFoundError(f"no *.parquet files under {items}")
    return files


def _read(files: list[Path]) -> pa.Table:
    tables = []
    need = (set(LIST_COLUMNS) - set(OPTIONAL_STREAMS)) | {"subject_id", "length", "split"}
    for f in files:
        t = pq.read_table(f)
        missing = sorted(need - set(t.column_names))
        if missing:
            raise ValueError(f"{f}: not a token-stream file, missing column(s) {missing} (see TOKENS_SCHEMA)")
        tables.append(t.select([c for c in TOKENS_SCHEMA.names if c in t.column_names]))
    return pa.concat_tables(tables, promote_options="permissive")


class TokenStreamDataset(Dataset[dict[str, Any]]):
    """Rows of token-stream parquet, optionally filtered by ``split`` and ``task``.

    ``source``: a folder (all ``*.parquet`` below it), a file, or a list of them. Pretraining rows have
    ``task`` null; pass ``task=`` to select one task's rows. Each item is a dict with the seven streams as
    1-D numpy arrays, ``subject_id``, ``length`` and, for task rows, the label columns (None when null).
    """

    def __init__(self, source: str | Path | Sequence[str | Path], split: str | None = None,
                 task: str | None = None, pretraining_only: bool = True) -> None:
        table = _read(_parquet_files(source))
        if split is not None:
            table = table.filter(pc.equal(table["split"], split))
        if task is not None:
            table = table.filter(pc.equal(table["task"], task))
        elif pretraining_only and "task" in table.column_names:
            table = table.filter(pc.is_null(table["task"]))
        self.split, self.task = split, task
        self.subject_ids = table["subject_id"].to_numpy()
        self.lengths = table["length"].to_numpy().astype(np.int64)
        self._values: dict[str, np.ndarray] = {}
        offsets = None
        for name in LIST_COLUMNS:
            if name not in table.column_names:
                continue  # an optional stream absent from older files: filled after the loop
            col = table[name].combine_chunks()
            assert isinstance(col, pa.ListArray)
            off = col.offsets.to_numpy()
            # the streams are parallel: same offsets, and ``length`` must agree with them
            if offsets is None:
                offsets = off
                bad = np.nonzero(np.diff(off) != self.lengths)[0]
                if bad.size:
                    i = int(bad[0])
                    raise ValueError(f"record subject_id={self.subject_ids[i]}: length={self.lengths[i]} but "
                                     f"concept_ids has {int(off[i + 1] - off[i])} tokens")
            elif not np.array_equal(off, offsets):
                i = int(np.nonzero(off != offsets)[0][0]) - 1
                raise ValueError(f"record subject_id={self.subject_ids[max(i, 0)]}: stream {name!r} length "
                                 "differs from concept_ids")
            self._values[name] = col.values.to_numpy(zero_copy_only=False)
        self._offsets = offsets if offsets is not None else np.zeros(1, dtype=np.int64)
        for name, fill in OPTIONAL_STREAMS.items():
            if name not in self._values:
                self._values[name] = np.full(int(self._offsets[-1]), fill, dtype=np.float32)
        self._labels = {c: table[c].to_pylist() for c in LABEL_COLUMNS if c in table.column_names}
        self._targets = table["target_ids"].to_pylist() if "target_ids" in table.column_names else None
        self.prediction_times = (table["prediction_time"].to_pylist()
                                 if "prediction_time" in table.column_names
                                 else None)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        item: dict[str, Any] = {name: vals[start:end] for name, vals in self._values.items()}
        item["subject_id"] = int(self.subject_ids[i])
        item["length"] = end - start
        for c, values in self._labels.items():
            item[c] = values[i]
        if self._targets is not None:
            item["target_ids"] = self._targets[i]
        return item
