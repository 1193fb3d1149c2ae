"""Write Spark events as a MEDS 0.4 dataset in the layout of docs/CONVENTIONS.md.

Every file of the dataset that grows with events or subjects is written by Spark's executors through
Spark's own writer, hence through Hadoop's FileSystem: any scheme the cluster's Hadoop configuration serves
(``hdfs://``, ``s3a://``, ``viewfs://`` ...) works, and the driver never holds a per-subject or per-event
row. The parquet bytes themselves are made by pyarrow in the task (:func:`_shard_table`, the very code the
local engine runs), because Spark's parquet writer cannot give MEDS tools the exact ``DATA_SCHEMA`` (no
``large_string``, no Arrow schema in the footer): each task hands its finished file to Spark's *text*
writer as one row whose bytes end where the file's trailing ``PAR1`` magic would be, and the text writer's
line separator — set to ``PAR1`` — completes it (:func:`_write_payloads`). The files are therefore
byte-identical to the local engine's. The tasks write into a hidden folder (``_``-prefixed: MEDS readers skip
it), then the driver renames each file into place through :mod:`ehrfm.storage` (Hadoop's FileSystem in
Spark's JVM): ``data/<split>/<n>.parquet`` and ``metadata/subject_{splits,ids}.parquet``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import ehrfm
from ehrfm.atomic import is_uri, write_marker
from ehrfm.config.ingest import DEFAULT_ROWS_PER_SHARD as DEFAULT_ROWS_PER_SHARD
from ehrfm.ingest.deaths import after_death_mask, count_after_death
from ehrfm.ingest.minted import minted_description
from ehrfm.layout import (
    MEDS_CODES,
    MEDS_DATA,
    MEDS_DATASET_JSON,
    MEDS_METADATA,
    MEDS_REJECTS,
    MEDS_SUBJECT_IDS,
    MEDS_SUBJECT_SPLITS,
    MEDS_SUMMARY,
)
from ehrfm.prepare.splits import DEFAULT_RATIOS, assign_splits, split_column, validate_ratios
from ehrfm.schema import (
    AFTER_DEATH,
    CODE,
    CODES_SCHEMA,
    DATA_SCHEMA,
    EVENTS_SCHEMA,
    REJECTS_SCHEMA,
    SPLITS,
    SPLITS_SCHEMA,
    SUBJECT_ID,
    TIME,
)

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

SUBJECT_IDS_SCHEMA = pa.schema(
    [pa.field(SUBJECT_ID, pa.int64(), nullable=False), pa.field("source_id", pa.string())]
)
# a shard's statistics: one row for the file, then one row per code (with its count), one row per subject
# (the local engine only: the Spark tasks leave them out, the driver must not receive a row per subject) and
# one row per source with events after their subject's death (``after_death`` set)
_STATS_ARROW = pa.schema(
    [("file", pa.string()), ("rows", pa.int64()), ("subjects", pa.int64()), ("code", pa.string()),
     ("subject_id", pa.int64()), ("source", pa.string()), ("after_death", pa.int64())]
)
UNKNOWN_VERSION = "unknown"
"""dataset.json ``dataset_version`` when neither the user (``--dataset_version``) nor the source names one."""
# columns the writer adds to the events: each subject's split and shard (dropped from the files), and the
# partition key that gives each shard its own task; the tasks' temporary file names (hidden from readers)
SPLIT, SHARD, PART_KEY, SHARD_PREFIX = "split", "_shard", "_part_key", "_shard-"
# what the Spark tasks hand to Spark's writer: a file's key (its hidden folder ``_f=<key>``) and its bytes
# (without the trailing magic, see the module docstring)
PAYLOAD, PAYLOAD_KEY, PAYLOAD_SCHEMA = "v", "_f", "_f string, v binary"
PARQUET_MAGIC = b"PAR1"
SPLITS_KEY, IDS_KEY = "subject_splits", "subject_ids"


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or URI (:func:`ehrfm.storage.filesystem`:
    Hadoop's FileSystem when a Spark session runs)."""
    from ehrfm.storage import filesystem

    return filesystem(uri)


def check_sorted_table(table: pa.Table, where: str) -> int:
    """Check MEDS ordering in one Arrow table: rows of a subject contiguous, sorted by (time nulls first,
    code).

    Returns the number of distinct subjects; raises ``ValueError`` naming ``where`` and the first bad row.
    """
    n = table.num_rows
    if n == 0:
        return 0
    sid = table.column(SUBJECT_ID).to_numpy(zero_copy_only=False)
    time_col = table.column(TIME).cast(pa.int64())
    tnull = time_col.is_null().to_numpy(zero_copy_only=False)
    t = time_col.fill_null(0).to_numpy(zero_copy_only=False)
    # sort key per row: (subject, time is not null, time, code)
    same_sub = sid[1:] == sid[:-1]
    same_null = tnull[1:] == tnull[:-1]
    bad = sid[1:] < sid[:-1]
    bad |= same_sub & ~tnull[:-1] & tnull[1:]  # a static row after a timed one
    bad |= same_sub & same_null & ~tnull[1:] & (t[1:] < t[:-1])
    codes = table.column(CODE).combine_chunks()
    code_down = pc.less(codes.slice(1), codes.slice(0, n - 1)).fill_null(False).to_numpy(zero_copy_only=False)
    bad |= same_sub & same_null & (tnull[1:] | (t[1:] == t[:-1])) & code_down
    idx = np.flatnonzero(bad)
    if idx.size:
        i = int(idx[0]) + 1
        raise ValueError(f"{where}: row {i} (subject_id={sid[i]}) breaks the (subject_id, time, code)"
                         " ordering")
    starts = np.concatenate([[True], ~same_sub])
    subjects = int(starts.sum())
    if len(np.unique(sid)) != subjects:
        raise ValueError(f"{where}: a subject's rows are not contiguous")
    return subjects


def _stats(**columns: list[Any]) -> pa.RecordBatch:
    """A batch of ``_STATS_ARROW`` rows from the given columns (the others null)."""
    n = len(columns["file"])
    return pa.RecordBatch.from_pydict({f.name: columns.get(f.name, [None] * n) for f in _STATS_ARROW},
                                      schema=_STATS_ARROW)


def _shard_writer(plan: Sequence[str]) -> Any:
    """The function each Spark task runs over its sorted partition: for each ``_shard`` ``i`` in it, the
    shard's parquet file (``data-<i>``), its statistics (``stats-<i>``: ``_STATS_ARROW`` rows without
    per-subject rows, read by the driver) and its subjects with the split folder they go to
    (``subjects-<i>``: read by the Spark task that writes subject_splits.parquet), as
    :data:`PAYLOAD_SCHEMA` rows for :func:`_write_payloads`; ``split`` = ``plan[i]`` (the file is renamed
    by the driver)."""

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        tables = [pa.Table.from_batches([b]) for b in batches if b.num_rows]
        if not tables:
            return
        table = pa.concat_tables(tables)
        shard = table.column(SHARD).to_numpy()
        # rows arrive sorted by _shard first, so each shard is one contiguous slice; a task holds several
        # shards only when the partition keys could not give every shard a partition of its own
        bounds = np.flatnonzero(np.diff(shard)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(shard)], strict=True):
            i = int(shard[lo])
            name = f"{plan[i]}/{SHARD_PREFIX}{i:06d}.parquet"
            data, subjects, late_mask = _shard_table(table.slice(int(lo), int(hi - lo)), name)
            yield _payload(f"data-{i:06d}", data, compression="zstd")
            stats = _shard_stats(data, name, subjects, late_mask, per_subject=False)
            yield _payload(f"stats-{i:06d}", pa.Table.from_batches(list(stats), schema=_STATS_ARROW))
            ids = pc.unique(data.column(SUBJECT_ID))  # rows are sorted by subject: so are these
            split = pa.array([plan[i]] * len(ids), pa.string())
            yield _payload(f"subjects-{i:06d}", pa.table({SUBJECT_ID: ids, SPLIT: split}))

    return write


def _payload(key: str, table: pa.Table, **write_args: Any) -> pa.RecordBatch:
    """One :data:`PAYLOAD_SCHEMA` row: ``table`` as the bytes of a parquet file (``pq.write_table`` with
    ``write_args``, as the local engine writes it) less its trailing magic, for :func:`_write_payloads`."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **write_args)
    data = sink.getvalue().to_pybytes()
    if not data.endswith(PARQUET_MAGIC):  # never seen: the parquet format ends every file with it
        raise RuntimeError(f"{key}: parquet bytes do not end with {PARQUET_MAGIC!r}")
    return pa.record_batch({PAYLOAD_KEY: pa.array([key], pa.string()),
                            PAYLOAD: pa.array([data[:-len(PARQUET_MAGIC)]], pa.binary())})


def _write_payloads(payloads: DataFrame, tmp_uri: str) -> dict[str, str]:
    """Write each :data:`PAYLOAD_SCHEMA` row of ``payloads`` as one file with Spark's text writer (Hadoop's
    FileSystem on the executors) under ``tmp_uri/_f=<key>/``; return ``{key: URI of its file}``.

    The text writer writes a row's bytes unchanged followed by its line separator; with the separator set to
    the parquet magic ``PAR1`` that the payload lacks, each file is exactly the parquet file the task made.
    Each key is one row made by one task, hence one file (checked)."""
    from pyspark.sql import functions as F

    from ehrfm.storage import join, list_names, spark_uri

    (payloads.select(PAYLOAD_KEY, F.col(PAYLOAD).cast("string").alias(PAYLOAD))
     .write.mode("overwrite").option("lineSep", PARQUET_MAGIC.decode())
     # explicit: a cluster-wide mapreduce.output.fileoutputformat.compress would otherwise gzip the bytes
     .option("compression", "none")
     .partitionBy(PAYLOAD_KEY).text(spark_uri(tmp_uri)))
    found: dict[str, str] = {}
    prefix = f"{PAYLOAD_KEY}="
    # O(files) listings on the driver, nothing per row
    for folder in list_names(tmp_uri):
        if not folder.startswith(prefix):
            continue
        parts = [n for n in list_names(join(tmp_uri, folder)) if not n.startswith((".", "_"))]
        if len(parts) != 1:
            raise RuntimeError(f"{join(tmp_uri, folder)}: {len(parts)} files written, expected 1")
        found[folder[len(prefix):]] = join(tmp_uri, folder, parts[0])
    return found


def _shard_table(table: pa.Table, name: str) -> tuple[pa.Table, int, pa.ChunkedArray]:
    """One shard's rows as written (EVENTS_SCHEMA types, ``after_death`` added), after checking their
    ordering; also the number of subjects and the after-death mask."""
    cols = []
    for f in EVENTS_SCHEMA:
        col = table.column(f.name)
        if pa.types.is_timestamp(col.type) and col.type.tz is not None:
            col = col.cast(pa.timestamp("us", tz="UTC")).cast(pa.timestamp("us"))
        cols.append(col.cast(f.type))
    table = pa.Table.from_arrays(cols, schema=EVENTS_SCHEMA)
    subjects = check_sorted_table(table, name)
    # a subject's rows are all in this shard, so its death (and the flag) is known here
    late_mask = after_death_mask(table)
    table = table.append_column(DATA_SCHEMA.field(AFTER_DEATH), late_mask.cast(pa.int8()))
    return table, subjects, late_mask


def _shard_stats(table: pa.Table, name: str, subjects: int, late_mask: pa.ChunkedArray, *,
                 per_subject: bool) -> Iterator[pa.RecordBatch]:
    """The ``_STATS_ARROW`` rows of one written shard (``name``); the per-subject rows only when
    ``per_subject``."""
    counts = pc.value_counts(table.column(CODE))
    yield _stats(file=[name] * (1 + len(counts)),
                 rows=[table.num_rows] + counts.field("counts").to_pylist(),
                 subjects=[subjects] + [None] * len(counts),
                 code=[None] + counts.field("values").to_pylist())
    if per_subject:
        ids = pc.unique(table.column(SUBJECT_ID)).to_pylist()
        yield _stats(file=[name] * len(ids), subject_id=ids)
    late = count_after_death(table, late_mask)
    yield _stats(file=[name] * len(late), source=list(late), after_death=list(late.values()))


def _write_shard(table: pa.Table, data_uri: str, name: str) -> Iterator[pa.RecordBatch]:
    """Write one shard's rows (EVENTS_SCHEMA types, ordering checked) as ``data_uri/name`` (the local
    engine); yield its stats, per-subject rows included."""
    table, subjects, late_mask = _shard_table(table, name)
    fs, base = _fs(data_uri)
    pq.write_table(table, f"{base}/{name}", filesystem=fs, compression="zstd")
    yield from _shard_stats(table, name, subjects, late_mask, per_subject=True)


def shard_plan(split_rows: dict[str, int], rows_per_shard: int) -> list[str]:
    """The split of each shard index: ``ceil(rows / rows_per_shard)`` shards per split (none for a split
    without events), splits in ``SPLITS`` order — so shard ``i`` of the whole dataset holds one split only."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard: must be >= 1, got {rows_per_shard}")
    return [s for s in SPLITS for _ in range(math.ceil(split_rows.get(s, 0) / rows_per_shard))]


def _partition_keys(spark: SparkSession, n: int) -> list[int]:
    """For each partition ``i < n`` an int key that ``repartition(n, key)`` sends to partition ``i``.

    Spark hash-partitions on ``pmod(hash(key), n)`` (the same Murmur3 as ``F.hash``), so partitioning on the
    shard number itself lands several shards in one task and leaves others idle; asking Spark which small
    ints fall in which partition gives each shard a task of its own. A partition no key below ``64 n``
    reaches (never seen in practice) keeps its shard number: correct, merely shared.
    """
    from pyspark.sql import functions as F

    key = F.col("id").cast("int")
    found = (spark.range(64 * n).select(F.pmod(F.hash(key), F.lit(n)).alias("p"), key.alias("k"))
             .groupBy("p").agg(F.min("k").alias("k")).collect())
    by_part = {int(r["p"]): int(r["k"]) for r in found}
    return [by_part.get(i, i) for i in range(n)]


def _shard_number(name: str) -> int:
    """The shard number in a task's temporary file name ``<split>/_shard-<i>.parquet``."""
    return int(name.rsplit(SHARD_PREFIX, 1)[1].removesuffix(".parquet"))


def conform_events(events_df: DataFrame) -> DataFrame:
    """Select and cast ``events_df`` to the EVENTS_SCHEMA columns (missing optional columns become null)."""
    from pyspark.sql import functions as F

    spark_types = {
        SUBJECT_ID: "bigint",
        TIME: "timestamp",
        CODE: "string",
        "numeric_value": "float",
        "text_value": "string",
        "encounter_id": "string",
        "unit": "string",
        "source": "string",
    }
    missing = [c for c in (SUBJECT_ID, CODE) if c not in events_df.columns]
    if missing:
        raise ValueError(f"events are missing required column(s) {missing}; have {events_df.columns}")
    cols = [
        (F.col(name) if name in events_df.columns else F.lit(None)).cast(typ).alias(name)
        for name, typ in spark_types.items()
    ]
    return events_df.select(*cols)


def _write_small(table: pa.Table, uri: str) -> None:
    fs, path = _fs(uri)
    pq.write_table(table, path, filesystem=fs)


def _write_json(obj: dict[str, Any], uri: str) -> None:
    fs, path = _fs(uri)
    with fs.open_output_stream(path) as f:
        f.write(json.dumps(obj, indent=2, default=str).encode())


def dataset_metadata(dataset_name: str, etl_name: str, dataset_version: str | None = None) -> dict[str, Any]:
    """MEDS DatasetMetadataSchema dict for an ehrfm-written dataset (validated with the meds package)."""
    from importlib.metadata import version

    from meds.schema import DatasetMetadataSchema

    meta: dict[str, Any] = {
        "dataset_name": dataset_name,
        # never the ingest date: that would make two ingests of one source look like two versions
        "dataset_version": dataset_version or UNKNOWN_VERSION,
        "etl_name": etl_name,
        "etl_version": ehrfm.__version__,
        "meds_version": version("meds"),
        "created_at": dt.datetime.now(dt.timezone.utc).replace(tzinfo=None).isoformat(),
        "raw_source_id_columns": ["encounter_id"],
        "code_modifier_columns": ["unit"],
        "other_extension_columns": ["source", AFTER_DEATH],
    }
    DatasetMetadataSchema.validate(meta)
    return meta


def _write_shards(spark: SparkSession, events: DataFrame, plan: list[str], tmp_uri: str
                  ) -> tuple[pa.Table, dict[int, str], list[str]]:
    """Write ``events`` (with a ``split`` column) as one file per shard of ``plan`` under the hidden folder
    ``tmp_uri`` (Spark's writer); return the tasks' statistics (``_STATS_ARROW``, no per-subject rows: one
    small file per shard, read here), ``{shard number: URI of its file}`` and the URIs of the shards'
    (subject_id, split) files."""
    from pyspark.sql import functions as F

    n = len(plan)
    if n == 0:
        return _STATS_ARROW.empty_table(), {}, []
    splits = list(dict.fromkeys(plan))
    # offset(split) + pmod(hash(subject_id), k_split): a subject in one shard of its own split
    bucket = F.hash(F.col(SUBJECT_ID))
    cases = [(F.col(SPLIT) == s, F.lit(plan.index(s)) + F.pmod(bucket, F.lit(plan.count(s)))) for s in splits]
    shard = F.when(*cases[0])
    for case in cases[1:]:
        shard = shard.when(*case)
    keys = F.array(*[F.lit(k) for k in _partition_keys(spark, n)])
    ordered = (events.withColumn(SHARD, shard).withColumn(PART_KEY, F.element_at(keys, F.col(SHARD) + 1))
               .repartition(n, PART_KEY)
               .sortWithinPartitions(F.col(SHARD), F.col(SUBJECT_ID), F.col(TIME).asc_nulls_first(),
                                     F.col(CODE))
               .drop(SPLIT, PART_KEY))  # the shard number names the split: less to ship to Python
    files = _write_payloads(ordered.mapInArrow(_shard_writer(plan), PAYLOAD_SCHEMA), tmp_uri)
    stats = []
    for key in sorted(k for k in files if k.startswith("stats-")):  # O(shards x codes) rows in all
        fs, path = _fs(files[key])
        stats.append(pq.read_table(path, filesystem=fs, schema=_STATS_ARROW))
    data = {int(k.removeprefix("data-")): uri for k, uri in files.items() if k.startswith("data-")}
    subjects = [uri for k, uri in sorted(files.items()) if k.startswith("subjects-")]
    return (pa.concat_tables(stats) if stats else _STATS_ARROW.empty_table()), data, subjects


def _publish_shards(stats: pa.Table, move: Callable[[str, str], None]) -> list[dict[str, Any]]:
    """Rename the shard files named by ``stats`` (``<split>/_shard-<i>.parquet``) to ``<split>/<n>.parquet``
    with ``move(old name, new name)``, ``n`` = 0, 1, … in shard order per split (a shard no subject hashed
    to has no file); return one ``{file, rows, subjects}`` per file (new names), in ``SPLITS`` then ``n``
    order."""
    is_file = pc.and_(pc.and_(pc.is_null(stats["code"]), pc.is_null(stats["subject_id"])),
                      pc.is_null(stats["source"]))
    files: list[dict[str, Any]] = stats.filter(is_file).select(["file", "rows", "subjects"]).to_pylist()
    files.sort(key=lambda f: (SPLITS.index(f["file"].split("/", 1)[0]), _shard_number(f["file"])))
    numbered: dict[str, int] = {}
    for f in files:
        split = f["file"].split("/", 1)[0]
        new = f"{split}/{numbered.setdefault(split, 0)}.parquet"
        numbered[split] += 1
        move(f["file"], new)
        f["file"] = new
    return files


def prepare_output(out: str) -> tuple[pafs.FileSystem, str]:
    """Make ``out`` ready for a MEDS write (any engine): the completion marker removed first (it comes back
    last: a folder without it is an unfinished write; stages write into a fresh staging folder, see
    ehrfm.atomic, this covers in-place writes to URIs), ``data/`` emptied (a rerun must not leave stale
    shards behind, flat part-*.parquet of older runs included), old parquet files of ``metadata/`` and
    ``rejects/`` removed. Returns the filesystem and ``out``'s path in it."""
    fs, base = _fs(out)
    if fs.get_file_info(f"{base}/{MEDS_SUMMARY}").type == pafs.FileType.File:
        fs.delete_file(f"{base}/{MEDS_SUMMARY}")
    fs.create_dir(f"{base}/{MEDS_DATA}", recursive=True)
    fs.delete_dir_contents(f"{base}/{MEDS_DATA}", missing_dir_ok=True)
    for sub in (MEDS_METADATA, MEDS_REJECTS):
        fs.create_dir(f"{base}/{sub}", recursive=True)
        for info in fs.get_file_info(pafs.FileSelector(f"{base}/{sub}", allow_not_found=True)):
            if info.type == pafs.FileType.File and info.path.endswith(".parquet"):
                fs.delete_file(info.path)
    return fs, base


@dataclass(frozen=True)
class WrittenShards:
    """What the shard writers' statistics say about the published shards."""

    files: list[dict[str, Any]]
    """``{file, rows, subjects}`` per published shard, in SPLITS then shard order."""
    codes: list[str]
    """Sorted distinct codes of the events."""
    events: int
    after_death: dict[str, int]
    """Events after their subject's death, per source."""
    split_subjects: dict[str, int]
    """Subjects per split (every split of ``SPLITS``, 0 for an empty one)."""
    subjects: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Sorted subject ids of the events: the local engine only (the Spark driver gets no per-subject row:
    empty there)."""

    @property
    def n_subjects(self) -> int:
        """Subjects of the events."""
        return sum(self.split_subjects.values())


def _written(stats: pa.Table, file_rows: list[dict[str, Any]], split_rows: dict[str, int],
             subjects: np.ndarray | None = None) -> WrittenShards:
    """Check that the published files' rows reconcile with ``split_rows`` (events assigned per split), in
    all and per split; sum up codes, subjects per split and events after death from ``stats``."""
    n_events = sum(split_rows.values())
    if sum(f["rows"] for f in file_rows) != n_events:
        raise RuntimeError(f"shard statistics do not reconcile: {file_rows} vs {n_events} events")
    for split in SPLITS:
        in_files = sum(f["rows"] for f in file_rows if f["file"].startswith(f"{split}/"))
        if in_files != split_rows.get(split, 0):
            raise RuntimeError(f"split {split}: {in_files} events in its shards, {split_rows.get(split, 0)} "
                               "assigned")
    # a subject is in one shard (its shard is a function of its id), so the shards' counts add up
    split_subjects = {s: sum(f["subjects"] for f in file_rows if f["file"].startswith(f"{s}/"))
                      for s in SPLITS}
    code_counts = stats.filter(pc.is_valid(stats["code"])).group_by("code").aggregate([("rows", "sum")])
    late = stats.filter(pc.is_valid(stats["source"])).group_by("source").aggregate([("after_death", "sum")])
    after_death = dict(sorted(zip(late["source"].to_pylist(), late["after_death_sum"].to_pylist(),
                                  strict=True)))
    return WrittenShards(file_rows, sorted(code_counts["code"].to_pylist()), n_events, after_death,
                         split_subjects, *([] if subjects is None else [subjects]))


def publish_shards(fs: pafs.FileSystem, out: str, stats: pa.Table, split_rows: dict[str, int],
                   ratios: Sequence[float], split_seed: int) -> WrittenShards:
    """The local engine's half of a shard write: rename the shard writers' temporary files (``stats`` in
    ``_STATS_ARROW`` form, one batch per shard from :func:`_write_shard`, per-subject rows included), check
    that rows, subjects and splits reconcile with ``split_rows`` (events assigned per split) and that every
    subject's folder is the split :func:`assign_splits` gives, and write metadata/subject_splits.parquet."""
    _, base = _fs(out)
    data_dir = f"{base}/{MEDS_DATA}"
    file_rows = _publish_shards(stats, lambda old, new: fs.move(f"{data_dir}/{old}", f"{data_dir}/{new}"))
    subject_split = {int(r["subject_id"]): r["file"].split("/", 1)[0]
                     for r in stats.filter(pc.is_valid(stats["subject_id"])).to_pylist()}
    subject_arr = np.sort(np.fromiter(subject_split, dtype=np.int64, count=len(subject_split)))
    n_subjects = len(subject_arr)
    # a subject in two shards would be counted twice by the files (and once by the dict)
    n_ids = int(pc.count(stats["subject_id"]).as_py())
    if sum(f["subjects"] for f in file_rows) != n_ids:
        raise RuntimeError(f"shard statistics do not reconcile: {file_rows} vs {n_ids} subject rows")
    if n_ids != n_subjects:
        raise RuntimeError(f"{n_ids - n_subjects} subject(s) landed in more than one shard")
    written = _written(stats, file_rows, split_rows, subject_arr)
    split_arr = np.array([subject_split[int(i)] for i in subject_arr], dtype=object)
    _write_small(_subject_splits_table(subject_arr, split_arr, ratios, split_seed),
                 f"{out}/{MEDS_SUBJECT_SPLITS}")
    return written


def _subject_splits_table(subject_arr: np.ndarray, split_arr: np.ndarray, ratios: Sequence[float],
                          split_seed: int) -> pa.Table:
    """metadata/subject_splits.parquet's table from sorted subject ids and their split folders, after
    checking each split against :func:`assign_splits` (the engine's split and its numpy twin are tested
    equal) and that no subject is in two folders."""
    if len(np.unique(subject_arr)) != len(subject_arr):
        raise RuntimeError(f"{len(subject_arr) - len(np.unique(subject_arr))} subject(s) in more than one "
                           "split folder")
    twin = assign_splits(subject_arr, ratios, split_seed)
    if not np.array_equal(split_arr, twin):
        raise RuntimeError(f"{int((split_arr != twin).sum())} subject(s) in a different split folder than "
                           "ehrfm.prepare.splits.assign_splits gives")
    return pa.table({SUBJECT_ID: subject_arr, "split": split_arr.astype(str)}, schema=SPLITS_SCHEMA)


def _subject_files(ratios: Sequence[float], split_seed: int, default_ids: bool) -> Any:
    """The function of the one Spark task that makes metadata/subject_splits.parquet (and, with
    ``default_ids``, subject_ids.parquet: each subject's id as its source id) from the distinct
    (subject_id, split) rows sorted by subject_id: :data:`PAYLOAD_SCHEMA` rows for :func:`_write_payloads`.
    MEDS wants one file each, so one task writes it: two columns per subject, never the driver."""

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        tables = [pa.Table.from_batches([b]) for b in batches if b.num_rows]
        ids = (pa.concat_tables(tables)[SUBJECT_ID].to_numpy() if tables else np.zeros(0, np.int64))
        splits = np.array(pa.concat_tables(tables)[SPLIT].to_pylist() if tables else [], dtype=object)
        yield _payload(SPLITS_KEY, _subject_splits_table(ids.astype(np.int64), splits, ratios,
                                                                  split_seed))
        if default_ids:
            yield _payload(IDS_KEY, _subject_ids_table([int(i) for i in ids], [str(i) for i in ids]))

    return write


def _ids_file(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """The function of the one Spark task that makes metadata/subject_ids.parquet from the distinct
    (subject_id, source_id) rows, sorted (one file, as MEDS wants: two columns per subject in one task)."""
    tables = [pa.Table.from_batches([b]) for b in batches if b.num_rows]
    t = pa.concat_tables(tables) if tables else None
    yield _payload(IDS_KEY, _subject_ids_table(
        [] if t is None else t[SUBJECT_ID].to_pylist(), [] if t is None else t["source_id"].to_pylist()))


def describe_codes(code_descriptions: pa.Table, code_list: Sequence[str]) -> tuple[dict[str, str],
                                                                                  dict[str, list[str]]]:
    """(description, parents) per code of ``code_list`` from a (code, description[, parent_codes]) table,
    in pyarrow: the smallest description of a code's rows and the sorted union of their parents (the same
    rule as the Spark writer's aggregate)."""
    present = set(code_list)
    has_parents = "parent_codes" in code_descriptions.column_names
    described: dict[str, str] = {}
    parent_sets: dict[str, set[str]] = {}
    cols = [code_descriptions.column(c).to_pylist() for c in ("code", "description")]
    plist = (code_descriptions.column("parent_codes").to_pylist() if has_parents
             else [None] * code_descriptions.num_rows)
    for code, desc, par in zip(cols[0], cols[1], plist, strict=True):
        if code not in present or (desc is None and not par):
            continue
        if desc is not None and (code not in described or desc < described[code]):
            described[code] = desc
        parent_sets.setdefault(code, set()).update(p for p in (par or []) if p is not None)
    return described, {c: sorted(p) for c, p in parent_sets.items() if p}


def write_codes(out: str, code_list: Sequence[str], described: dict[str, str],
                parents: dict[str, list[str]]) -> None:
    """metadata/codes.parquet: every code of the events, its description (the source's, else ours for a
    code ehrfm mints: MEDS_BIRTH, ENCOUNTER//…) and parent codes."""
    _write_small(
        pa.table(
            {
                "code": list(code_list),
                "description": [described.get(c) or minted_description(c) for c in code_list],
                "parent_codes": [parents.get(c) for c in code_list],
            },
            schema=CODES_SCHEMA,
        ),
        f"{out}/{MEDS_CODES}",
    )


def _subject_ids_table(subject_ids: Sequence[int], source_ids: Sequence[str | None]) -> pa.Table:
    """metadata/subject_ids.parquet's table."""
    return pa.table({SUBJECT_ID: list(subject_ids), "source_id": list(source_ids)}, schema=SUBJECT_IDS_SCHEMA)


def write_subject_ids(out: str, subject_ids: Sequence[int], source_ids: Sequence[str | None]) -> None:
    """metadata/subject_ids.parquet: (subject_id, source_id), in the caller's (subject_id) order."""
    _write_small(_subject_ids_table(subject_ids, source_ids), f"{out}/{MEDS_SUBJECT_IDS}")


def _parquet_rows(uri: str) -> int:
    """Rows of the parquet file ``uri``, from its footer."""
    fs, path = _fs(uri)
    with fs.open_input_file(path) as fh:
        return int(pq.ParquetFile(fh).metadata.num_rows)


def count_parquet_rows(uri: str) -> int:
    """Rows of every ``*.parquet`` directly under ``uri``, from the footers."""
    n = 0
    rfs, rbase = _fs(uri)
    for info in rfs.get_file_info(pafs.FileSelector(rbase)):
        if info.type == pafs.FileType.File and info.path.endswith(".parquet"):
            with rfs.open_input_file(info.path) as fh:
                n += pq.ParquetFile(fh).metadata.num_rows
    return n


def finish_dataset(out: str, written: WrittenShards, *, dataset_name: str, etl_name: str,
                   dataset_version: str | None, summary: dict[str, Any] | None, n_rejects: int,
                   ratios: Sequence[float], split_seed: int, runtime: dict[str, Any]) -> dict[str, Any]:
    """Write metadata/dataset.json and, last, summary.json (the completion marker); return the summary.
    ``runtime`` names the engine that wrote the shards (``spark_master`` for Spark)."""
    fs, base = _fs(out)
    meta = dataset_metadata(dataset_name, etl_name, dataset_version)
    _write_json(meta, f"{out}/{MEDS_DATASET_JSON}")
    result = {
        **(summary or {}),
        "dataset_name": dataset_name,
        "events": written.events,
        "subjects": written.n_subjects,
        "codes": len(written.codes),
        "rejects": n_rejects,
        "splits": dict(written.split_subjects),
        "split_ratios": list(ratios),
        "split_seed": split_seed,
        **runtime,
        "shards": written.files,
        # kept, but later than the subject's first MEDS_DEATH (per source column value; see count_after_death)
        "after_death": {"total": sum(written.after_death.values()), "by_source": written.after_death},
    }
    if is_uri(out):
        _write_json(result, f"{out}/{MEDS_SUMMARY}")
    else:
        # temporary file + rename: whole or absent
        write_marker(f"{base}/{MEDS_SUMMARY}", json.dumps(result, indent=2, default=str))
    return result


def write_meds_dataset(
    spark: SparkSession,
    events_df: DataFrame,
    output: str,
    *,
    dataset_name: str,
    etl_name: str,
    code_descriptions: DataFrame | None = None,
    rejects: DataFrame | None = None,
    subject_ids: DataFrame | None = None,
    summary: dict[str, Any] | None = None,
    split_ratios: Sequence[float] = DEFAULT_RATIOS,
    split_seed: int = 0,
    rows_per_shard: int | None = None,
    cache_events: bool = True,
    dataset_version: str | None = None,
) -> dict[str, Any]:
    """Write ``events_df`` (EVENTS_SCHEMA-like Spark DataFrame) as a MEDS dataset under ``output``.

    Layout (names from :mod:`ehrfm.layout`, joined as strings so that URIs stay intact):
    ``data/<split>/<n>.parquet`` (MEDS-Transforms: one split per folder, ``n`` = 0, 1, … per split, shard
    counts proportional to the split's events; a subject in one file; sorted by subject_id, time with static
    rows first, code), ``metadata/{dataset.json,codes.parquet,subject_splits.parquet,subject_ids.parquet}``
    (the subject splits are read back from the folders the subjects were written to),
    ``rejects/part-*.parquet`` and ``summary.json``. ``code_descriptions`` has columns (code,
    description) and optionally ``parent_codes`` (array<string>; a code's parents are the sorted union
    over its rows, so parents may come in rows of their own with a null description); ``subject_ids``
    (subject_id, source_id); ``dataset_version`` goes to dataset.json (default :data:`UNKNOWN_VERSION`).
    ``cache_events=False`` when ``events_df`` is a cheap projection of a frame the caller already cached
    (the events are read twice: count and shards). The driver receives rows per split, shard, code and
    source only; the per-subject metadata files are made by one Spark task each.
    Returns the summary dict written to summary.json.
    """
    from pyspark.sql import functions as F

    from ehrfm.storage import delete, join, move, spark_uri

    ratios = validate_ratios(split_ratios)
    out = output.rstrip("/")
    prepare_output(out)

    events = conform_events(events_df)
    if cache_events:
        events = events.persist()
    # the split is a column before partitioning (Spark expression, numpy twin checked below), so each shard
    # holds one split; one aggregate gives the event count per split, hence the shard count per split
    events = events.withColumn(SPLIT, split_column(SUBJECT_ID, ratios, split_seed))
    split_rows = {r[SPLIT]: int(r["count"]) for r in events.groupBy(SPLIT).count().collect()}
    plan = shard_plan(split_rows, rows_per_shard or DEFAULT_ROWS_PER_SHARD)
    # hidden from MEDS readers ("_" prefix); unique, so that no other write can collide with it
    tmp = join(out, MEDS_DATA, f"_writing-{uuid.uuid4().hex}")
    meta_tmp = join(out, MEDS_METADATA, f"_writing-{uuid.uuid4().hex}")
    try:
        stats, shard_files, subject_files = _write_shards(spark, events, plan, tmp)
        data_uri = join(out, MEDS_DATA)
        file_rows = _publish_shards(stats, lambda old, new: move(shard_files[_shard_number(old)],
                                                                 join(data_uri, new)))
        written = _written(stats, file_rows, split_rows)

        # metadata/subject_splits.parquet (+ subject_ids.parquet by default) from one Spark task, out of the
        # shard tasks' (subject_id, split folder) files: no further pass over the events
        files: dict[str, str] = {}
        if subject_files:
            subjects = (spark.read.schema(f"{SUBJECT_ID} long, {SPLIT} string")
                        .parquet(*[spark_uri(f) for f in subject_files])
                        .repartition(1).sortWithinPartitions(SUBJECT_ID))
            one_task = _subject_files(ratios, split_seed, default_ids=subject_ids is None)
            files = _write_payloads(subjects.mapInArrow(one_task, PAYLOAD_SCHEMA), join(meta_tmp, SPLITS_KEY))
        if subject_ids is not None:
            ids = (subject_ids.select(F.col(SUBJECT_ID).cast("bigint"), F.col("source_id").cast("string"))
                   .distinct().repartition(1).sortWithinPartitions(SUBJECT_ID, "source_id"))
            files.update(_write_payloads(ids.mapInArrow(_ids_file, PAYLOAD_SCHEMA), join(meta_tmp, IDS_KEY)))
        for key, dest in ((SPLITS_KEY, MEDS_SUBJECT_SPLITS), (IDS_KEY, MEDS_SUBJECT_IDS)):
            if key not in files:  # an empty input may leave Spark no partition to run the task in
                if written.n_subjects:
                    raise RuntimeError(f"{join(out, dest)}: no Spark task wrote it")
                _write_small(_subject_splits_table(np.zeros(0, np.int64), np.zeros(0, object), ratios,
                                                   split_seed) if key == SPLITS_KEY
                             else _subject_ids_table([], []), join(out, dest))
            else:
                move(files[key], join(out, dest))
        in_file = _parquet_rows(join(out, MEDS_SUBJECT_SPLITS))
        if in_file != written.n_subjects:  # a subject in two shards is counted twice by the shards
            raise RuntimeError(f"{written.n_subjects} subjects in the shards, {in_file} in "
                               f"{join(out, MEDS_SUBJECT_SPLITS)}")
    finally:
        delete(tmp)
        delete(meta_tmp)
    code_list = written.codes

    described: dict[str, str] = {}
    parents: dict[str, list[str]] = {}
    if code_descriptions is not None and code_list:
        has_parents = "parent_codes" in code_descriptions.columns
        parent_col = F.col("parent_codes") if has_parents else F.lit(None)
        desc = code_descriptions.select(F.col("code").cast("string"), F.col("description").cast("string"),
                                        parent_col.cast("array<string>").alias("parent_codes"))
        present = spark.createDataFrame([(c,) for c in code_list], "code string")
        useful = F.col("description").isNotNull() | (F.size("parent_codes") > 0)
        desc = desc.where(useful).join(F.broadcast(present), on="code", how="inner")
        firsts = desc.groupBy("code").agg(
            F.min("description").alias("d"),
            F.array_sort(F.array_distinct(F.flatten(F.collect_list(
                F.coalesce("parent_codes", F.array().cast("array<string>")))))).alias("p"),
        ).collect()
        described = {r["code"]: r["d"] for r in firsts if r["d"] is not None}
        parents = {r["code"]: r["p"] for r in firsts if r["p"]}
    write_codes(out, code_list, described, parents)

    n_rejects = 0
    if rejects is not None:
        rej = rejects.select(
            *[F.col(f.name).cast("bigint" if f.name == "record_index" else "string") for f in REJECTS_SCHEMA]
        )
        # Spark's writer, one file per partition (as many tasks as the rejects have partitions): scalable to
        # any number of rejects; the count comes from the footers
        rej.write.mode("overwrite").parquet(spark_uri(f"{out}/{MEDS_REJECTS}"))
        n_rejects = count_parquet_rows(f"{out}/{MEDS_REJECTS}")
    if cache_events:
        events.unpersist()

    return finish_dataset(out, written, dataset_name=dataset_name, etl_name=etl_name,
                          dataset_version=dataset_version, summary=summary, n_rejects=n_rejects,
                          ratios=ratios, split_seed=split_seed,
                          runtime={"spark_master": spark.conf.get("spark.master", None)})
