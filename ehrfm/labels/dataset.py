"""``label_dataset``: the label engines -- ``local`` on one machine (polars, no Spark), ``spark`` and
``reference`` with Spark; the reference one runs ``label_subject_rows``.

``local`` (:mod:`ehrfm.labels.local_engine`) reads the event files in one process and never starts Spark or
a JVM. The Spark plan: read the MEDS events (4 columns), attach each subject's last event time
(``record_end``: follow-up censoring must see every event, not only the few codes the tasks read), keep only
the codes the tasks read, then ``groupBy(subject_id).applyInArrow`` once for all tasks. That is the
``reference`` engine; the ``spark`` engine runs the same rules as Spark expressions
(:mod:`ehrfm.labels.spark_engine`). The executors write each task
(:func:`~ehrfm.labels.tables.write_labels_spark`) as ``<output>/<task>.parquet``, a MEDS label table sorted by
(subject_id, prediction_time) (``prediction_time`` a timezone-naive ``timestamp[us]``) as a folder of parts,
plus the sidecar ``<task>.extra.parquet`` of a time-to-event or forecast task; the summary is one Spark
aggregate. Nothing proportional to events or label rows reaches the driver. The local engine writes one file
per table (:func:`~ehrfm.labels.tables.write_labels`). Inputs and outputs are local paths or URIs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from ehrfm import storage
from ehrfm.labels.direct import dataset_codes, read_splits, summarize
from ehrfm.labels.engine import label_subject_rows, rows_to_arrow
from ehrfm.labels.parse import load_task, load_tasks, warn_missing_codes
from ehrfm.labels.spark_engine import summarize_spark
from ehrfm.labels.spec import TaskSpec, relevant_codes_regex
from ehrfm.labels.tables import LABELS_DDL, TASK, write_labels, write_labels_spark
from ehrfm.layout import MEDS_CODES, MEDS_SUBJECT_SPLITS
from ehrfm.meds_files import read_meds_spark
from ehrfm.schema import CODE, ENCOUNTER_ID, LABELS_SCHEMA, SUBJECT_ID, TIME

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

RECORD_END = "_record_end"
OUTPUT_DDL = f"{LABELS_DDL}, {TASK} string"


def _label_group(specs: list[TaskSpec]) -> Any:
    """The grouped-Arrow function: one subject's events in, all tasks' label rows out (with ``task``)."""

    def fn(table: pa.Table) -> pa.Table:
        pdf = table.to_pandas()
        record_end = pd.Timestamp(pdf[RECORD_END].iloc[0]) if len(pdf) else None
        parts = []
        for name, rows in label_subject_rows(pdf.drop(columns=[RECORD_END]), specs, record_end).items():
            t = rows_to_arrow(rows)
            parts.append(t.append_column(TASK, pa.array([name] * t.num_rows, pa.string())))
        schema = LABELS_SCHEMA.append(pa.field(TASK, pa.string()))
        return pa.concat_tables(parts).cast(schema) if parts else schema.empty_table()

    return fn


def label_frame(events: DataFrame, specs: list[TaskSpec]) -> DataFrame:
    """Spark DataFrame of label rows for all ``specs`` (OUTPUT_DDL columns, ``task`` names the task)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if ENCOUNTER_ID not in events.columns:
        events = events.withColumn(ENCOUNTER_ID, F.lit(None).cast("string"))
    ev = events.select(
        F.col(SUBJECT_ID).cast("long"), F.col(TIME).cast("timestamp_ntz").alias(TIME),
        F.col(CODE).cast("string"), F.col(ENCOUNTER_ID).cast("string"),
    ).where(F.col(TIME).isNotNull())
    ev = ev.withColumn(RECORD_END, F.max(TIME).over(Window.partitionBy(SUBJECT_ID)))
    ev = ev.where(F.col(CODE).rlike(relevant_codes_regex(specs)))
    return ev.groupBy(SUBJECT_ID).applyInArrow(_label_group(specs), OUTPUT_DDL)


ENGINES = ("spark", "reference", "local", "auto")


def resolve_engine(engine: str, master: str | None, locations: Sequence[str] = ()) -> str:
    """The engine ``engine`` runs as: ``auto`` is ``spark`` under spark-submit (etl/label.py: the submitted
    master decides), when ``master`` (default ``$EHRFM_SPARK_MASTER``) names a cluster (``spark://``,
    ``yarn``, ``k8s://``, ``mesos://``: any non-local master) or when one of ``locations`` (the MEDS and
    labels folders) is a URI other than ``file:``, else ``local``; any other engine is itself."""
    from ehrfm.config.spark import resolve_engine as resolve  # one rule for every stage's ``auto``

    if engine not in ENGINES:
        raise ValueError(f"engine: must be one of {', '.join(ENGINES)}, got {engine!r}")
    return resolve(engine, master, locations)


def _codes(meds: str, events: DataFrame | None) -> list[str]:
    """The dataset's distinct codes for :func:`~ehrfm.labels.parse.warn_missing_codes`: its codes metadata
    when present (:func:`~ehrfm.labels.direct.dataset_codes`); else, with Spark, a distinct over the events
    (codes, not events, reach the driver)."""
    if events is None or storage.exists(storage.join(meds, MEDS_CODES)):
        return dataset_codes(meds)
    return [str(r[0]) for r in events.select(CODE).distinct().collect()]


def by_subject(labels: DataFrame, specs: Sequence[TaskSpec]) -> DataFrame:
    """Label rows of every task (OUTPUT_DDL, the reference engine's :func:`label_frame`) in the form of
    :func:`~ehrfm.labels.spark_engine.labels_by_task` (one row per subject, one array of label structs per
    task): so one Spark aggregate, :func:`~ehrfm.labels.spark_engine.summarize_spark`, summarizes both."""
    from pyspark.sql import functions as F

    row = F.struct(*[F.col(c) for c in LABELS_SCHEMA.names if c != SUBJECT_ID])
    return labels.groupBy(SUBJECT_ID).agg(*[  # collect_list skips the nulls of the other tasks' rows
        F.collect_list(F.when(F.col(TASK) == s.name, row)).alias(s.name) for s in specs])


def label_dataset(
    spark: SparkSession | None,
    meds_dir: str | Path,
    tasks: str | Sequence[str | TaskSpec],
    output: str | Path,
    progress: bool = False,
    tasks_dir: str | Path | None = None,
    engine: str = "spark",
) -> pd.DataFrame:
    """Label an ingested MEDS dataset; write ``<output>/<task>.parquet`` (+ its sidecar) per task.

    ``meds_dir`` and ``output``: local paths or URIs (:mod:`ehrfm.storage`; a Spark engine reads and writes
    them with Spark's Hadoop filesystems, the local engine with pyarrow / polars).
    ``tasks``: specs, task names, ``"a,b"`` or ``"all"`` (names are read from ``tasks_dir``).
    ``engine``: ``spark`` (the rules as Spark expressions, :mod:`ehrfm.labels.spark_engine`),
    ``reference`` (the per-subject Python engine in ``applyInArrow``), ``local`` (polars in this process,
    :mod:`ehrfm.labels.local_engine`; ``spark`` is not used and may be None) or ``auto``
    (:func:`resolve_engine` on ``spark``'s master); all write identical tables -- the local engine one file
    per table, the Spark engines a folder of parts written by the executors.
    Returns the summary (:func:`~ehrfm.labels.direct.summarize`): rows, subjects, positives and
    prevalence per task and split -- a Spark aggregate for the Spark engines. Warns for task code patterns
    that match no code of the dataset.
    """
    engine = resolve_engine(engine, None if spark is None else spark.sparkContext.master)
    specs: list[TaskSpec] = (load_tasks(tasks, tasks_dir) if isinstance(tasks, str)
                             else [t if isinstance(t, TaskSpec) else load_task(t, tasks_dir) for t in tasks])
    meds, out = storage.normalize(str(meds_dir)), storage.normalize(str(output))
    iterator: Iterable[TaskSpec] = specs
    if progress:
        from tqdm import tqdm

        iterator = tqdm(specs, desc="label", unit="task")
    if engine == "local":
        warn_missing_codes(specs, _codes(meds, None))
        storage.makedirs(out)
        return _label_local(meds, specs, iterator, out)
    if spark is None:
        raise ValueError(f"engine {engine!r}: needs a Spark session")
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    events = read_meds_spark(spark, meds)
    warn_missing_codes(specs, _codes(meds, events))
    storage.makedirs(out)
    if engine == "spark":
        from ehrfm.labels.spark_engine import labels_by_task, task_table

        # every task's write and the summary read the per-subject label arrays (small) computed once
        by_task = labels_by_task(events, specs).persist(StorageLevel.MEMORY_AND_DISK)
        for spec in iterator:
            write_labels_spark(task_table(by_task, spec.name), spec.kind, out, spec.name)
    else:
        labels = label_frame(events, specs).persist(StorageLevel.MEMORY_AND_DISK)
        for spec in iterator:
            write_labels_spark(labels.where(F.col(TASK) == spec.name).drop(TASK), spec.kind, out, spec.name)
        by_task = by_subject(labels, specs).persist(StorageLevel.MEMORY_AND_DISK)
        labels.unpersist()
    splits_uri = storage.join(meds, MEDS_SUBJECT_SPLITS)
    splits = spark.read.parquet(storage.spark_uri(splits_uri)) if storage.exists(splits_uri) else None
    summary = summarize_spark(by_task, specs, splits)
    by_task.unpersist()
    return summary


def _label_local(meds_dir: str, specs: list[TaskSpec], iterator: Iterable[TaskSpec],
                 out: str) -> pd.DataFrame:
    """The ``local`` engine: read, label and write every task in this process (no Spark); the summary is
    :func:`~ehrfm.labels.direct.summarize` of the tables written, as for the reference engine."""
    from ehrfm.labels.local_engine import prepare, read_events, task_table

    # all tasks share one read and one preparation of the events; each table is written as it is labelled
    prepared = prepare(read_events(meds_dir), specs)
    tables = {}
    for spec in iterator:
        tables[spec.name] = task_table(prepared, spec)
        write_labels(tables[spec.name], spec.kind, out, spec.name)
    return summarize(tables, {s.name: s.kind for s in specs}, read_splits(meds_dir))
