"""Write events as a MEDS 0.4 dataset on one machine (polars + pyarrow, no JVM): the twin of
:func:`ehrfm.ingest.writer.write_meds_dataset`.

Same layout, schema, split assignment, shard plan and checks: the engine-neutral half (publishing shards,
subject splits, codes, subject ids, dataset.json and summary.json) is the very code the Spark writer calls,
and each shard goes through the same :func:`ehrfm.ingest.writer._write_shard` (types, ordering check,
``after_death``, statistics). A subject lands in the shard Spark would give it too: Spark's
``pmod(hash(subject_id), k)`` is computed here with :func:`spark_hash_long` (Murmur3, seed 42), so both
engines write the same subjects to the same files. Source-neutral: any ingest (MIMIC-IV, FHIR, MEDS input)
can hand its events here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import polars as pl  # this module is imported only where the local engine runs (never by the CLI's --help)
import pyarrow as pa
import pyarrow.parquet as pq

from ehrfm.config.ingest import DEFAULT_ROWS_PER_SHARD
from ehrfm.ingest.writer import (
    _STATS_ARROW,
    SHARD,
    SHARD_PREFIX,
    _fs,
    _write_shard,
    count_parquet_rows,
    describe_codes,
    finish_dataset,
    prepare_output,
    publish_shards,
    shard_plan,
    write_codes,
    write_subject_ids,
)
from ehrfm.layout import MEDS_DATA, MEDS_REJECTS
from ehrfm.prepare.splits import DEFAULT_RATIOS, assign_splits, validate_ratios
from ehrfm.schema import CODE, REJECTS_SCHEMA, SPLITS, SUBJECT_ID, TIME

Frame: TypeAlias = pl.LazyFrame | pl.DataFrame | pa.Table
"""What the local writer takes as events, rejects or subject ids."""

_M32 = np.uint32(0xFFFFFFFF)
_C1, _C2 = np.uint32(0xCC9E2D51), np.uint32(0x1B873593)
_SPARK_HASH_SEED = 42  # Spark's hash() (Murmur3_x86_32) starts every row from seed 42


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def _mix(h1: np.ndarray, k1: np.ndarray) -> np.ndarray:
    k1 = _rotl(k1 * _C1, 15) * _C2
    h1 = _rotl(h1 ^ k1, 13)
    return h1 * np.uint32(5) + np.uint32(0xE6546B64)


def spark_hash_long(ids: np.ndarray) -> np.ndarray:
    """Spark's ``hash(col)`` of a bigint column (Murmur3_x86_32 ``hashLong``, seed 42) as int32, in numpy:
    the Spark writer assigns a subject to shard ``offset + pmod(hash(subject_id), k)``."""
    v = np.asarray(ids, dtype=np.int64).view(np.uint64)
    with np.errstate(over="ignore"):  # uint32 arithmetic wraps modulo 2**32 by design
        low = (v & np.uint64(0xFFFFFFFF)).astype(np.uint32)
        high = (v >> np.uint64(32)).astype(np.uint32)
        h = _mix(np.full(v.shape, _SPARK_HASH_SEED, dtype=np.uint32), low)
        h = _mix(h, high)
        h ^= np.uint32(8)  # fmix with the input length in bytes
        h ^= h >> np.uint32(16)
        h *= np.uint32(0x85EBCA6B)
        h ^= h >> np.uint32(13)
        h *= np.uint32(0xC2B2AE35)
        h ^= h >> np.uint32(16)
    return (h & _M32).view(np.int32)


def _polars(frame: Frame) -> pl.DataFrame:
    """``frame`` as an eager polars DataFrame (a LazyFrame is collected with the streaming engine)."""
    if isinstance(frame, pl.LazyFrame):
        return frame.collect(engine="streaming")
    if isinstance(frame, pa.Table):
        out = pl.from_arrow(frame)
        assert isinstance(out, pl.DataFrame)
        return out
    return frame


def conform_events_local(events: Frame) -> pl.DataFrame:
    """Select and cast ``events`` to the EVENTS_SCHEMA columns (missing optional columns become null): the
    twin of :func:`ehrfm.ingest.writer.conform_events`."""
    types: dict[str, Any] = {SUBJECT_ID: pl.Int64, TIME: pl.Datetime("us"), CODE: pl.String,
                             "numeric_value": pl.Float32, "text_value": pl.String, "encounter_id": pl.String,
                             "unit": pl.String, "source": pl.String}
    frame: pl.DataFrame | pl.LazyFrame = _polars(events) if isinstance(events, pa.Table) else events
    schema = frame.collect_schema()
    missing = [c for c in (SUBJECT_ID, CODE) if c not in schema]
    if missing:
        raise ValueError(f"events are missing required column(s) {missing}; have {schema.names()}")
    cols = []
    for name, typ in types.items():
        if name not in schema:
            cols.append(pl.lit(None, dtype=typ).alias(name))
        elif name == TIME and schema[name] == pl.Datetime("us", "UTC"):
            cols.append(pl.col(name).dt.replace_time_zone(None))  # UTC wall time, as the Spark writer
        else:
            cols.append(pl.col(name).cast(typ))
    if isinstance(frame, pl.DataFrame):
        # eager: a cast to the type a column already has shares its buffers (no copy of the events)
        return frame.select(cols)
    return _polars(frame.select(cols))


def _write_events(events: pl.DataFrame, data_uri: str, ratios: Sequence[float], split_seed: int,
                  rows_per_shard: int) -> tuple[pa.Table, dict[str, int]]:
    """Assign splits and shards, sort, write one temporary file per shard (as the Spark tasks do); return
    the shard statistics (``_STATS_ARROW``) and the events per split."""
    per_subject = events.group_by(SUBJECT_ID).len().sort(SUBJECT_ID)
    sids = per_subject[SUBJECT_ID].to_numpy()
    split = assign_splits(sids, ratios, split_seed)
    counts = per_subject["len"].to_numpy()
    split_rows = {s: int(counts[split == s].sum()) for s in SPLITS if (split == s).any()}
    plan = shard_plan(split_rows, rows_per_shard)
    if not plan:
        return _STATS_ARROW.empty_table(), split_rows
    fs, base = _fs(data_uri)
    for s in dict.fromkeys(plan):
        fs.create_dir(f"{base}/{s}", recursive=True)
    # offset(split) + pmod(hash(subject_id), k_split), exactly the Spark writer's shard of each subject
    offset = np.array([plan.index(s) for s in split], dtype=np.int64)
    k = np.array([plan.count(s) for s in split], dtype=np.int64)
    shard = offset + np.mod(spark_hash_long(sids).astype(np.int64), k)
    # a column added, not a join: the other columns are shared, not copied; then one shard at a time is
    # filtered out and sorted, so memory holds the events plus one sorted shard (not a sorted copy of all)
    events = events.with_columns(pl.col(SUBJECT_ID).replace_strict(sids, shard, return_dtype=pl.Int64)
                                 .alias(SHARD))
    batches: list[pa.RecordBatch] = []
    for i in sorted(set(shard.tolist())):
        part = (events.filter(pl.col(SHARD) == i).drop(SHARD)
                .sort([SUBJECT_ID, TIME, CODE], nulls_last=False, maintain_order=False))
        # large_string, not polars' string_view: the shard writer casts to EVENTS_SCHEMA types
        table = part.to_arrow(compat_level=pl.CompatLevel.oldest())
        del part
        batches.extend(_write_shard(table, data_uri, f"{plan[i]}/{SHARD_PREFIX}{i:06d}.parquet"))
    return pa.Table.from_batches(batches, schema=_STATS_ARROW), split_rows


def write_meds_local(
    events: Frame,
    output: str,
    *,
    dataset_name: str,
    etl_name: str,
    code_descriptions: pa.Table | None = None,
    rejects: Frame | None = None,
    subject_ids: Frame | None = None,
    summary: dict[str, Any] | None = None,
    split_ratios: Sequence[float] = DEFAULT_RATIOS,
    split_seed: int = 0,
    rows_per_shard: int | None = None,
    dataset_version: str | None = None,
) -> dict[str, Any]:
    """Write ``events`` (EVENTS_SCHEMA-like polars LazyFrame/DataFrame or Arrow table) as a MEDS dataset
    under ``output`` on this machine; returns the summary dict written to summary.json.

    The arguments and the output are those of :func:`ehrfm.ingest.writer.write_meds_dataset` (see it for
    the layout): ``code_descriptions`` (code, description[, parent_codes]) as an Arrow table, ``rejects``
    with the REJECTS_SCHEMA columns, ``subject_ids`` (subject_id, source_id). The summary says
    ``"engine": "local"`` where the Spark writer names its ``spark_master``. The events are held in memory
    once (plus their sorted copy while the shards are written).
    """
    ratios = validate_ratios(split_ratios)
    out = output.rstrip("/")
    fs, _ = prepare_output(out)
    frame = conform_events_local(events)
    stats, split_rows = _write_events(frame, f"{out}/{MEDS_DATA}", ratios, split_seed,
                                      rows_per_shard or DEFAULT_ROWS_PER_SHARD)
    del frame
    written = publish_shards(fs, out, stats, split_rows, ratios, split_seed)

    described: dict[str, str] = {}
    parents: dict[str, list[str]] = {}
    if code_descriptions is not None and written.codes:
        described, parents = describe_codes(code_descriptions, written.codes)
    write_codes(out, written.codes, described, parents)

    if subject_ids is None:
        write_subject_ids(out, [int(i) for i in written.subjects], [str(i) for i in written.subjects])
    else:
        ids = (_polars(subject_ids)
               .select(pl.col(SUBJECT_ID).cast(pl.Int64), pl.col("source_id").cast(pl.String))
               .unique().sort([SUBJECT_ID, "source_id"]))
        write_subject_ids(out, ids[SUBJECT_ID].to_list(), ids["source_id"].to_list())

    n_rejects = 0
    if rejects is not None:
        rej = _polars(rejects).select(
            [pl.col(f.name).cast(pl.Int64 if f.name == "record_index" else pl.String)
             for f in REJECTS_SCHEMA])
        table = rej.to_arrow(compat_level=pl.CompatLevel.oldest()).cast(
            pa.schema([f.with_nullable(True) for f in REJECTS_SCHEMA]))
        rfs, rbase = _fs(f"{out}/{MEDS_REJECTS}")
        pq.write_table(table, f"{rbase}/part-00000.parquet", filesystem=rfs)
        n_rejects = count_parquet_rows(f"{out}/{MEDS_REJECTS}")

    return finish_dataset(out, written, dataset_name=dataset_name, etl_name=etl_name,
                          dataset_version=dataset_version, summary=summary, n_rejects=n_rejects,
                          ratios=ratios, split_seed=split_seed, runtime={"engine": "local"})
