"""Label tables on disk: the one writer and the one reader every stage uses (pandas, Arrow and Spark forms).

On disk (ehrfm/tasks/README.md, "Output") a task is ``<labels>/<task>.parquet``, a MEDS label file
(``meds.LabelSchema``: the key and the value columns of the task's kind, none null) and, for time-to-event
and forecast tasks, the sidecar ``<labels>/<task>.extra.parquet`` (:data:`~ehrfm.schema.LABEL_EXTRAS`) keyed
by (subject_id, prediction_time), rows in the file's order. ``<labels>/tasks.json`` names each task's kind.

The reader returns the in-memory form, :data:`~ehrfm.schema.LABELS_SCHEMA` sorted by (subject_id,
prediction_time), with each label in one place: ``boolean_value`` (binary), ``duration_days`` + ``event``
(time-to-event), ``target_codes`` (forecast). It also reads

- label files another MEDS tool wrote (ACES): no sidecar and no ``tasks.json`` entry make a binary task
  labelled by ``boolean_value``; extra columns are ignored, nullable columns and timezone-aware or other
  integer / timestamp types are accepted, rows repeating a key with the same label are kept once (a
  warning says how many);
- outputs of older ehrfm versions: ``<task>.parquet/`` folders of parts with the extras as columns.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ehrfm import storage
from ehrfm.layout import LABEL_EXTRAS_SUFFIX, LABEL_KINDS_JSON, LABEL_SUFFIX
from ehrfm.schema import (
    BOOLEAN_VALUE,
    DURATION_DAYS,
    EVENT,
    FLOAT_VALUE,
    INTEGER_VALUE,
    LABEL_EXTRAS,
    LABEL_EXTRAS_SCHEMA,
    LABEL_KEY,
    LABEL_KINDS,
    LABELS_SCHEMA,
    MEDS_LABEL_SCHEMA,
    MEDS_LABEL_VALUES,
    PREDICTION_TIME,
    SUBJECT_ID,
    TARGET_CODES,
)

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

TASK = "task"
# LABELS_SCHEMA in Spark's words (naive times: TIMESTAMP_NTZ, like MEDS event times)
LABELS_DDL = (
    "subject_id long, prediction_time timestamp_ntz, boolean_value boolean, integer_value long, "
    "float_value double, categorical_value string, duration_days double, event tinyint, "
    "target_codes array<string>"
)
_DDL_TYPES = dict(f.split(" ", 1) for f in LABELS_DDL.split(", "))  # column -> Spark type
# the label of each kind in the in-memory form: what must be present and non-null in every row
_LABEL_OF = {"binary": (BOOLEAN_VALUE,), "time_to_event": (DURATION_DAYS, EVENT), "forecast": (TARGET_CODES,)}


def sort_labels(table: pa.Table) -> pa.Table:
    """Rows ordered by (subject_id, prediction_time): the canonical order of every label table."""
    return table.sort_by([(SUBJECT_ID, "ascending"), (PREDICTION_TIME, "ascending")])


def _check_kind(kind: str, task: str) -> None:
    if kind not in LABEL_KINDS:
        raise ValueError(f"task {task!r}: kind must be one of {', '.join(LABEL_KINDS)}, got {kind!r}")


def _no_nulls(table: pa.Table, columns: Sequence[str], task: str, where: str) -> None:
    """A clear error for nulls where none may be (counts only: label values are patient data)."""
    for c in columns:
        n = table.column(c).null_count
        if n:
            raise ValueError(f"task {task!r}: {where}: column {c!r} is null in {n} of {table.num_rows} rows")


# --- write -----------------------------------------------------------------------------------------------
def split_labels(table: pa.Table, kind: str, task: str = "?") -> tuple[pa.Table, pa.Table | None]:
    """An in-memory label table (LABELS_SCHEMA columns) as (MEDS label table, sidecar or None), both sorted
    by (subject_id, prediction_time), in :data:`~ehrfm.schema.MEDS_LABEL_SCHEMA` /
    :data:`~ehrfm.schema.LABEL_EXTRAS_SCHEMA` types with only the kind's columns.

    The MEDS value columns are what a MEDS tool reads (:data:`~ehrfm.schema.MEDS_LABEL_VALUES`): binary
    ``boolean_value``; time-to-event ``boolean_value`` = event observed and ``float_value`` = days to the
    event or censoring; forecast ``integer_value`` = number of target codes.
    """
    _check_kind(kind, task)
    wide = sort_labels(table.select(LABELS_SCHEMA.names).cast(LABELS_SCHEMA))
    _no_nulls(wide, [*LABEL_KEY, *_LABEL_OF[kind]], task, "label table")
    derived: dict[str, pa.ChunkedArray] = {
        BOOLEAN_VALUE: wide.column(BOOLEAN_VALUE) if kind == "binary" else pc.equal(wide.column(EVENT), 1),
        FLOAT_VALUE: wide.column(DURATION_DAYS),
        INTEGER_VALUE: pc.list_value_length(wide.column(TARGET_CODES)),
    }
    cols = [*LABEL_KEY, *MEDS_LABEL_VALUES[kind]]
    meds_schema = pa.schema([MEDS_LABEL_SCHEMA.field(c) for c in cols])
    arrays = [wide.column(c) if c in LABEL_KEY else derived[c] for c in cols]
    meds = pa.Table.from_arrays([a.cast(f.type) for a, f in zip(arrays, meds_schema, strict=True)],
                                schema=meds_schema)
    if not LABEL_EXTRAS[kind]:
        return meds, None
    extras_schema = pa.schema([LABEL_EXTRAS_SCHEMA.field(c) for c in (*LABEL_KEY, *LABEL_EXTRAS[kind])])
    extras = pa.Table.from_arrays([wide.column(f.name).cast(f.type) for f in extras_schema],
                                  schema=extras_schema)
    return meds, extras


def label_files(labels_dir: str | Path, task: str) -> tuple[str, str]:
    """``(<labels>/<task>.parquet, <labels>/<task>.extra.parquet)``: a local folder as an absolute path, a URI
    kept intact (:func:`ehrfm.storage.normalize`)."""
    base = storage.normalize(str(labels_dir))
    return storage.join(base, f"{task}{LABEL_SUFFIX}"), storage.join(base, f"{task}{LABEL_EXTRAS_SUFFIX}")


def _write_table(table: pa.Table, location: str) -> None:
    fs, path = storage.filesystem(location)
    pq.write_table(table, path, filesystem=fs)


def write_labels(table: pa.Table, kind: str, labels_dir: str | Path, task: str) -> list[str]:
    """Write ``<labels_dir>/<task>.parquet`` (one MEDS label file) and, for time-to-event and forecast tasks,
    ``<task>.extra.parquet`` (:func:`split_labels`); returns where (local paths or URIs, as ``labels_dir``). A
    table or sidecar left there by an earlier run (a folder of parts, a sidecar of a task that is now binary)
    is replaced / removed."""
    meds, extras = split_labels(table, kind, task)
    path, sidecar = label_files(labels_dir, task)
    storage.makedirs(storage.parent(path))
    storage.delete(path)
    _write_table(meds, path)
    storage.delete(sidecar)
    if extras is None:
        return [path]
    _write_table(extras, sidecar)
    return [path, sidecar]


def write_labels_spark(frame: DataFrame, kind: str, labels_dir: str | Path, task: str) -> list[str]:
    """:func:`write_labels` for a Spark DataFrame of label rows (LABELS_DDL columns): the label file and the
    sidecar as Spark folders of parts (``<task>.parquet/part-*.parquet``, which pyarrow, polars, pandas and
    Spark read as one table), written by the executors -- no label row reaches the driver. Same columns and
    types as :func:`split_labels`, rows sorted by (subject_id, prediction_time) across the parts in name
    order: a key is unique, so the label folder and its sidecar line up row for row whatever the range
    boundaries of each write. Nulls where none may be are refused before writing (counts only)."""
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    _check_kind(kind, task)
    need = [*LABEL_KEY, *_LABEL_OF[kind]]
    nulls = frame.select(F.count(F.lit(1)).alias("_n"),
                         *[F.count_if(F.col(c).isNull()).alias(c) for c in need]).first()
    assert nulls is not None
    for c in need:
        if nulls[c]:
            raise ValueError(f"task {task!r}: label table: column {c!r} is null in {nulls[c]} of "
                             f"{nulls['_n']} rows")
    derived = {BOOLEAN_VALUE: F.col(BOOLEAN_VALUE) if kind == "binary" else F.col(EVENT) == 1,
               FLOAT_VALUE: F.col(DURATION_DAYS).cast("float"),
               INTEGER_VALUE: F.size(TARGET_CODES).cast("bigint")}
    meds_cols = [F.col(c) if c in LABEL_KEY else derived[c].alias(c)
                 for c in (*LABEL_KEY, *MEDS_LABEL_VALUES[kind])]
    rows = frame.select(F.col(SUBJECT_ID).cast("bigint"), F.col(PREDICTION_TIME).cast("timestamp_ntz"),
                        *[c for c in frame.columns if c not in LABEL_KEY]).orderBy(*LABEL_KEY)
    path, sidecar = label_files(labels_dir, task)
    extras = LABEL_EXTRAS[kind]
    if extras:
        rows = rows.persist(StorageLevel.MEMORY_AND_DISK)  # two writes, one sort
    try:
        rows.select(*meds_cols).write.mode("overwrite").parquet(storage.spark_uri(path))
        if extras:
            types = {DURATION_DAYS: "double", EVENT: "tinyint", TARGET_CODES: "array<string>"}
            rows.select(*LABEL_KEY, *[F.col(c).cast(types[c]) for c in extras]).write.mode(
                "overwrite").parquet(storage.spark_uri(sidecar))
    finally:
        if extras:
            rows.unpersist()
    if not extras:
        storage.delete(sidecar)
        return [path]
    return [path, sidecar]


# --- read ------------------------------------------------------------------------------------------------
def read_kinds(labels_dir: str | Path) -> dict[str, str]:
    """``<labels_dir>/tasks.json`` (task -> kind) as written by ``ehrfm label``; empty when absent (a folder
    another tool wrote)."""
    path = storage.join(storage.normalize(str(labels_dir)), LABEL_KINDS_JSON)
    if not storage.is_file(path):
        return {}
    kinds = storage.read_json(path)
    if not isinstance(kinds, dict):
        raise ValueError(f"{path}: expected an object task -> kind")
    return {str(k): str(v) for k, v in kinds.items()}


def label_tasks(labels_dir: str | Path) -> list[str]:
    """Tasks with a label table (a file or a folder of parts) in ``labels_dir``, sorted; sidecars and hidden
    names (staging folders) are not tasks (as :meth:`Layout.label_tasks`, for local paths and URIs)."""
    return [n[: -len(LABEL_SUFFIX)] for n in storage.list_names(storage.normalize(str(labels_dir)))
            if n.endswith(LABEL_SUFFIX) and not n.endswith(LABEL_EXTRAS_SUFFIX)
            and not n.startswith((".", "_"))]


def _typed(table: pa.Table, name: str, to: pa.DataType, task: str) -> pa.Array | pa.ChunkedArray:
    """Column ``name`` cast to ``to``; timezone-aware times become naive UTC wall time (as MEDS times are)."""
    col = table.column(name)
    try:
        return col.cast(to)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise ValueError(f"task {task!r}: column {name!r} of type {col.type} does not convert to {to}") from e


def _kind_of(task: str, raw: pa.Table, extras: pa.Table | None, kinds: dict[str, str]) -> str:
    """The task's kind: tasks.json, else the sidecar's columns, else the extras inline (older outputs),
    else binary (a MEDS label file of another tool)."""
    if task in kinds:
        _check_kind(kinds[task], task)
        return kinds[task]
    for source in (extras, raw):
        if source is None:
            continue

        # a sidecar's columns count; inline ones (older outputs) when not all null
        def filled(c: str, t: pa.Table = source) -> bool:
            return c in t.column_names and (t is extras or t.column(c).null_count < t.num_rows)

        if filled(DURATION_DAYS):
            return "time_to_event"
        if filled(TARGET_CODES):
            return "forecast"
    return "binary"


def _aligned(raw: pa.Table, extras: pa.Table, task: str, sidecar: str) -> None:
    """The sidecar must hold the label file's keys in the same order (it is joined by position)."""
    sidecar = storage.name(sidecar)
    for c in LABEL_KEY:
        if c not in extras.column_names:
            raise ValueError(f"task {task!r}: {sidecar}: missing key column {c!r}")
    if extras.num_rows != raw.num_rows:
        raise ValueError(f"task {task!r}: {sidecar} has {extras.num_rows} rows, the label file "
                         f"{raw.num_rows}: written by different runs")
    for c, to in ((SUBJECT_ID, pa.int64()), (PREDICTION_TIME, pa.timestamp("us"))):
        if not _typed(raw, c, to, task).equals(_typed(extras, c, to, task)):
            raise ValueError(f"task {task!r}: {sidecar}: column {c!r} differs from the label file's "
                             "(written by different runs)")


def _label_columns(task: str, kind: str, raw: pa.Table,
                   extras: pa.Table | None) -> dict[str, pa.ChunkedArray]:
    """The kind's label columns of the in-memory form, from the sidecar, the extras inline, or (a
    time-to-event file without its sidecar) the MEDS columns."""
    need = _LABEL_OF[kind]
    for source in (extras, raw):
        if source is not None and all(c in source.column_names for c in need):
            return {c: _typed(source, c, LABELS_SCHEMA.field(c).type, task) for c in need}
    if kind == "time_to_event" and {BOOLEAN_VALUE, FLOAT_VALUE} <= set(raw.column_names):
        return {DURATION_DAYS: _typed(raw, FLOAT_VALUE, pa.float64(), task),
                EVENT: _typed(raw, BOOLEAN_VALUE, pa.int8(), task)}
    where = "its sidecar" if kind != "binary" else "the label file"
    raise ValueError(f"task {task!r} ({kind}): no column {' / '.join(need)} in {where}")


def _dedupe(columns: dict[str, pa.ChunkedArray], kind: str, task: str) -> pa.Table:
    """The in-memory table of ``columns``, sorted by key; a key repeated with the same label is kept once
    (warned), with another label it is an error (ACES writes one row per trigger event: two triggers at one
    instant repeat the key)."""
    n = len(columns[SUBJECT_ID])
    table = pa.table({f.name: columns.get(f.name, pa.nulls(n, f.type)) for f in LABELS_SCHEMA},
                     schema=LABELS_SCHEMA)
    if n < 2 or table.group_by(list(LABEL_KEY)).aggregate([]).num_rows == n:
        return sort_labels(table)
    if kind == "forecast":  # list labels do not group; ehrfm's engines never repeat a key
        raise ValueError(f"task {task!r}: (subject_id, prediction_time) repeats in the label table")
    distinct = table.group_by([*LABEL_KEY, *_LABEL_OF[kind]]).aggregate([])
    if distinct.group_by(list(LABEL_KEY)).aggregate([]).num_rows != distinct.num_rows:
        raise ValueError(f"task {task!r}: (subject_id, prediction_time) repeats with different labels")
    warnings.warn(f"task {task!r}: {n - distinct.num_rows} rows repeat an earlier (subject_id, "
                  "prediction_time) with the same label; each key is kept once", stacklevel=3)
    return _dedupe({c: distinct.column(c) for c in distinct.column_names}, kind, task)


def read_task_labels(labels_dir: str | Path, task: str, kind: str | None = None) -> pa.Table:
    """The label table of ``task`` in ``labels_dir`` in the in-memory form (LABELS_SCHEMA, sorted by
    (subject_id, prediction_time)). ``kind``: the task's kind when known (default: ``tasks.json``, the
    sidecar, else binary). Errors name the task, the file and the column, never a value."""
    path, sidecar = label_files(labels_dir, task)
    if not storage.exists(path):
        raise FileNotFoundError(f"task {task!r}: no label table {path} (have: {label_tasks(labels_dir)})")
    raw = _read_table(path)
    file = storage.name(path)
    for c in LABEL_KEY:
        if c not in raw.column_names:
            raise ValueError(f"task {task!r}: {file}: missing label column {c!r}")
    extras = _read_table(sidecar) if storage.exists(sidecar) else None
    kind = _kind_of(task, raw, extras, read_kinds(labels_dir) if kind is None else {task: kind})
    if LABEL_EXTRAS[kind] and extras is not None:
        _aligned(raw, extras, task, sidecar)
    else:
        extras = None  # binary: a sidecar left by an earlier run of a task of that name is not read
    _no_nulls(raw, LABEL_KEY, task, file)  # e.g. an ACES config without index_timestamp
    columns = {SUBJECT_ID: _typed(raw, SUBJECT_ID, pa.int64(), task),
               PREDICTION_TIME: _typed(raw, PREDICTION_TIME, pa.timestamp("us"), task),
               **_label_columns(task, kind, raw, extras)}
    for c in _LABEL_OF[kind]:
        if columns[c].null_count:
            raise ValueError(f"task {task!r}: {file}: column {c!r} (the {kind} label) is null in "
                             f"{columns[c].null_count} of {raw.num_rows} rows")
    return _dedupe(columns, kind, task)


def _read_table(location: str) -> pa.Table:
    """A parquet file, or a folder of parts (hidden and ``_``-prefixed names skipped), at a path or URI."""
    fs, path = storage.filesystem(location)
    return pq.read_table(path, filesystem=fs)


def read_labels(path: str | Path, kind: str | None = None) -> pa.Table:
    """:func:`read_task_labels` of the label table at ``path`` (``<labels>/<task>.parquet``; a path or
    URI)."""
    location = storage.normalize(str(path))
    task = storage.name(location).removesuffix(LABEL_SUFFIX)
    return read_task_labels(storage.parent(location), task, kind)


def read_tasks(labels_dir: str | Path, tasks: Sequence[str] | None = None) -> dict[str, pa.Table]:
    """task -> in-memory label table for ``tasks`` (default: every task in ``labels_dir``)."""
    root = storage.normalize(str(labels_dir))
    if not storage.is_dir(root):
        raise FileNotFoundError(f"labels directory not found: {root}")
    return {t: read_task_labels(root, t) for t in (tasks or label_tasks(root))}


def task_frames(labels_dir: str | Path, tasks: Sequence[str] | None = None) -> dict[str, pd.DataFrame]:
    """:func:`read_tasks` as pandas DataFrames (LABELS_SCHEMA columns)."""
    return {t: table.to_pandas() for t, table in read_tasks(labels_dir, tasks).items()}


def tasks_table(labels_dir: str | Path, tasks: Sequence[str]) -> pa.Table:
    """The label tables of ``tasks`` stacked: LABELS_SCHEMA columns, then ``task``."""
    parts = [t.append_column(TASK, pa.array([name] * t.num_rows, pa.string()))
             for name, t in read_tasks(labels_dir, list(tasks)).items()]
    empty = LABELS_SCHEMA.append(pa.field(TASK, pa.string())).empty_table()
    return pa.concat_tables(parts) if parts else empty


def tasks_frame(labels_dir: str | Path, tasks: Sequence[str]) -> pd.DataFrame:
    """:func:`tasks_table` as one pandas DataFrame (what the one-process tokenizer reads)."""
    frame: pd.DataFrame = tasks_table(labels_dir, tasks).to_pandas()
    return frame


def tasks_spark(spark: SparkSession, labels_dir: str | Path, tasks: Sequence[str]) -> DataFrame | None:
    """:func:`tasks_table` as a Spark DataFrame in LABELS_DDL (None for no tasks), in no particular order.

    A table ``ehrfm label`` wrote (``tasks.json`` names its kind; a file or a folder of parts, its sidecar
    when the kind has one) is read by Spark itself (:func:`_task_spark`): no label row reaches the driver.
    Files of other tools and older layouts (no ``tasks.json`` entry, extras inline, timezone-aware or other
    types, repeated keys to drop) are read by the Arrow reader on the driver and handed to Spark: one reader
    keeps those rules (a one-off import, not what a cluster pipeline writes)."""
    if not tasks:
        return None
    base = storage.normalize(str(labels_dir))
    kinds = read_kinds(base)
    ddl = f"{LABELS_DDL}, {TASK} string"
    frames: list[DataFrame] = []
    driver: list[str] = []
    for task in tasks:
        native = _task_spark(spark, base, task, kinds[task]) if task in kinds else None
        if native is None:
            driver.append(task)
        else:
            frames.append(native)
    if driver:
        frames.append(spark.createDataFrame(tasks_table(base, driver), ddl))
    out = frames[0]
    for f in frames[1:]:
        out = out.unionByName(f)
    return out


def _task_spark(spark: SparkSession, labels_dir: str, task: str, kind: str) -> DataFrame | None:
    """The label table of ``task`` (of ``kind``, from ``tasks.json``) read by Spark, in LABELS_DDL plus
    ``task``; None when it is not in the form ehrfm writes (the caller reads it with the Arrow reader).

    Checked as the Arrow reader checks (one Spark aggregate; counts, never values): no null key or label,
    and the sidecar holds exactly the label file's keys (joined on the key, unique in ehrfm's tables)."""
    from pyspark.sql import functions as F

    _check_kind(kind, task)
    path, sidecar = label_files(labels_dir, task)
    if not storage.exists(path):
        raise FileNotFoundError(f"task {task!r}: no label table {path} (have: {label_tasks(labels_dir)})")
    extras = LABEL_EXTRAS[kind]
    if extras and not storage.exists(sidecar):
        return None  # a time-to-event file without its sidecar: the Arrow reader's fallbacks
    raw = spark.read.parquet(storage.spark_uri(path))
    side = spark.read.parquet(storage.spark_uri(sidecar)) if extras else None
    for frame, cols in ((raw, (*LABEL_KEY, *MEDS_LABEL_VALUES[kind])), (side, (*LABEL_KEY, *extras))):
        types = {} if frame is None else dict(frame.dtypes)
        if frame is not None and (types.get(PREDICTION_TIME) != "timestamp_ntz"
                                  or any(c not in types for c in cols)):
            return None
    key = [F.col(SUBJECT_ID).cast("bigint").alias(SUBJECT_ID), F.col(PREDICTION_TIME)]
    if side is None:
        rows = raw.select(*key, F.col(BOOLEAN_VALUE).cast("boolean"), F.lit(True).alias("_l"),
                          F.lit(True).alias("_r"))
    else:
        rows = raw.select(*key, F.lit(True).alias("_l")).join(
            side.select(*key, *[F.col(c).cast(_DDL_TYPES[c]) for c in extras], F.lit(True).alias("_r")),
            list(LABEL_KEY), "full_outer")
    need = [*LABEL_KEY, *_LABEL_OF[kind]]
    got = rows.select(F.count(F.lit(1)).alias("_n"), F.count_if(F.col("_l").isNull()).alias("_side"),
                      F.count_if(F.col("_r").isNull()).alias("_file"),
                      *[F.count_if(F.col(c).isNull()).alias(c) for c in need]).first()
    assert got is not None
    for c in LABEL_KEY:
        if got[c]:
            raise ValueError(f"task {task!r}: {storage.name(path)}: column {c!r} is null in {got[c]} of "
                             f"{got['_n']} rows")
    if got["_side"] or got["_file"]:
        raise ValueError(f"task {task!r}: {storage.name(sidecar)} and the label file hold different keys "
                         f"({got['_file']} only in the label file, {got['_side']} only in the sidecar): "
                         "written by different runs")
    for c in _LABEL_OF[kind]:
        if got[c]:
            raise ValueError(f"task {task!r}: {storage.name(path)}: column {c!r} (the {kind} label) is null "
                             f"in {got[c]} of {got['_n']} rows")
    present = set(rows.columns)
    return rows.select(*[F.col(c) if c in present else F.lit(None).cast(_DDL_TYPES[c]).alias(c)
                         for c in LABELS_SCHEMA.names], F.lit(task).alias(TASK))
