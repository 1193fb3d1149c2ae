"""The population path: the per-patient :func:`tokenize_subject` under Spark.

Events are grouped by subject and co-grouped with the union of all label tables
(``groupBy("subject_id").cogroup(...).applyInPandas``), so a subject's label rows meet its events in
one call of the SAME function the serving path uses. The split is joined afterwards from the MEDS subject
splits (a Spark join, not a driver-side dict, so it scales).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from ehrfm import storage
from ehrfm.config.tokenize import TokenizerConfig
from ehrfm.labels.tables import tasks_spark
from ehrfm.layout import TOKENS_PRETRAIN, TOKENS_TASKS
from ehrfm.meds_files import read_meds_spark
from ehrfm.prepare.bins import Bins
from ehrfm.schema import (
    CODE,
    ENCOUNTER_ID,
    NUMERIC_VALUE,
    PREDICTION_TIME,
    SUBJECT_ID,
    TIME,
    TOKENS_SCHEMA,
)
from ehrfm.tokenize.direct import read_tokens  # noqa: F401  (re-exported: readers need no Spark)
from ehrfm.tokenize.tokenizer import COLUMNS, rows_to_frame, tokenize_subject
from ehrfm.vocab import Vocabulary

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import SparkSession
    from pyspark.sql.types import DataType, StructType

EVENT_INPUT_COLUMNS = (SUBJECT_ID, TIME, CODE, NUMERIC_VALUE, ENCOUNTER_ID)
# percentile_approx accuracy of the Spark summary's length percentiles (rank error 1/accuracy)
SUMMARY_ACCURACY = 10_000


def _spark_type(t: pa.DataType) -> DataType:
    from pyspark.sql import types as T

    if pa.types.is_list(t):
        return T.ArrayType(_spark_type(t.value_type), containsNull=False)
    simple: dict[pa.DataType, Any] = {
        pa.int64(): T.LongType(),
        pa.int32(): T.IntegerType(),
        pa.int8(): T.ByteType(),
        pa.float32(): T.FloatType(),
        pa.float64(): T.DoubleType(),
        pa.string(): T.StringType(),
        pa.timestamp("us"): T.TimestampNTZType(),  # naive, like MEDS event times
    }
    if t not in simple:
        raise TypeError(f"no Spark type for {t}")
    out: DataType = simple[t]
    return out


def spark_tokens_schema() -> StructType:
    """TOKENS_SCHEMA as a Spark schema (timestamps are TIMESTAMP_NTZ, matching MEDS naive times)."""
    from pyspark.sql import types as T

    return T.StructType([T.StructField(f.name, _spark_type(f.type), f.nullable) for f in TOKENS_SCHEMA])


def read_events_spark(spark: SparkSession, meds_dir: str | Path) -> SparkDataFrame:
    """MEDS events of ``<meds>/data`` (either layout; a local path or any URI Spark's Hadoop serves) with the
    columns the tokenizer uses (``encounter_id`` when present)."""
    df: SparkDataFrame = read_meds_spark(spark, storage.normalize(str(meds_dir)))
    missing = [c for c in (SUBJECT_ID, TIME, CODE) if c not in df.columns]
    if missing:
        raise ValueError(f"{meds_dir}/data: missing MEDS column(s) {missing}")
    return df.select(*[c for c in EVENT_INPUT_COLUMNS if c in df.columns])


def read_labels_spark(spark: SparkSession, labels_dir: str | Path,
                      tasks: Sequence[str]) -> SparkDataFrame | None:
    """The label tables of ``tasks`` as one Spark DataFrame with a ``task`` column, None for no tasks
    (:func:`ehrfm.labels.tables.tasks_spark`)."""
    return tasks_spark(spark, labels_dir, tasks)


def tokenize_spark(
    events: SparkDataFrame,
    labels: SparkDataFrame | None,
    splits: SparkDataFrame | None,
    vocab: Vocabulary,
    bins: Bins,
    cfg: TokenizerConfig,
    *,
    pretrain: bool = True,
) -> SparkDataFrame:
    """Token rows for a population (Spark DataFrame in the Spark form of TOKENS_SCHEMA).

    ``splits``: ``subject_id``, ``split`` (None leaves ``split`` null).
    """
    schema = spark_tokens_schema()

    def with_labels(ev: pd.DataFrame, lab: pd.DataFrame) -> pd.DataFrame:
        return rows_to_frame(tokenize_subject(ev, vocab, bins, cfg, labels=lab, pretrain=pretrain))

    def events_only(ev: pd.DataFrame) -> pd.DataFrame:
        # one argument: Spark passes (key, frame) to a two-argument function of a plain groupBy
        return rows_to_frame(tokenize_subject(ev, vocab, bins, cfg, labels=None, pretrain=pretrain))

    if labels is None:
        out = events.groupBy(SUBJECT_ID).applyInPandas(events_only, schema)
    else:
        grouped = events.groupBy(SUBJECT_ID).cogroup(labels.groupBy(SUBJECT_ID))
        out = grouped.applyInPandas(with_labels, schema)
    if splits is not None:
        out = out.drop("split").join(splits.select(SUBJECT_ID, "split"), on=SUBJECT_ID, how="left")
    return out.select(*COLUMNS)


def write_tokens(rows: SparkDataFrame, output: str | Path, tasks: Sequence[str], *,
                 pretrain: bool = True) -> Iterator[str]:
    """Write ``<output>/pretrain`` (unless ``pretrain`` is false: that folder is left alone) and
    ``<output>/tasks/<task>`` (overwrite), yielding each path written (``output``: a local path or URI; the
    paths yielded keep its form).

    Rows are sorted within files by subject and prediction time so reruns write the same content.
    """
    from pyspark.sql import functions as F

    base = storage.normalize(str(output))
    targets: list[tuple[str, Any]] = [(TOKENS_PRETRAIN, F.col("task").isNull())] if pretrain else []
    targets += [(f"{TOKENS_TASKS}/{t}", F.col("task") == t) for t in tasks]
    for rel, cond in targets:
        path = storage.join(base, rel)
        part = rows.where(cond).sortWithinPartitions(SUBJECT_ID, PREDICTION_TIME)
        part.write.mode("overwrite").parquet(storage.spark_uri(path))
        yield path


def summarize_spark(rows: SparkDataFrame, accuracy: int = SUMMARY_ACCURACY) -> pd.DataFrame:
    """:func:`ehrfm.tokenize.direct.summarize` as one Spark aggregate: per (task, split) rows, label mean,
    event rate, length p50/p90/p99 and max; only those few rows reach the driver.

    The length percentiles are ``percentile_approx`` with ``accuracy``: each is an observed length whose rank
    among the group's ``n`` rows is within ``n / accuracy`` of ``q * n`` (rank error ``1/accuracy``; 0.01 %
    with the default). So they may differ from the local engine's exact, linearly interpolated percentiles by
    that rank error plus the interpolation between neighbouring lengths; every other column is exact and
    equal to the local engine's.
    """
    from pyspark.sql import functions as F

    levels = F.array(*[F.lit(q) for q in (0.5, 0.9, 0.99)])
    keyed = rows.select(F.coalesce("task", F.lit("(pretrain)")).alias("task"),
                        F.coalesce("split", F.lit("(none)")).alias("split"), "length", "label", "event")
    agg = keyed.groupBy("task", "split").agg(
        F.count(F.lit(1)).alias("rows"), F.avg("label").alias("label_mean"),
        F.avg("event").alias("event_rate"),
        F.percentile_approx("length", levels, accuracy).alias("p"), F.max("length").alias("len_max"))
    got = agg.orderBy("task", "split").collect()
    frame = pd.DataFrame({
        "task": [r["task"] for r in got], "split": [r["split"] for r in got],
        "rows": pd.array([r["rows"] for r in got], dtype="int64"),
        "label_mean": pd.array([r["label_mean"] for r in got], dtype="float64"),
        "event_rate": pd.array([r["event_rate"] for r in got], dtype="float64"),
        **{name: pd.array([float(r["p"][i]) for r in got], dtype="float64")
           for i, name in enumerate(("len_p50", "len_p90", "len_p99"))},
        "len_max": pd.array([r["len_max"] for r in got], dtype="int32"),
    })
    return frame
