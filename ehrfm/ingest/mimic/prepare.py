"""Reading MIMIC-IV CSV tables into Spark and the per-table "prepare" steps named in rules.yaml.

Every column is read as a string (no schema inference: NDC codes and ICD codes keep their leading zeros,
and a bad value becomes a reject instead of failing the read). Each row carries ``_file`` and ``_row`` (its
0-based data-row index in the file, header excluded) so a reject can point back at its record.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ehrfm import storage
from ehrfm.ingest.writer import _fs

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

Loader = Callable[[str], "DataFrame | None"]
TIME_FORMATS = ("yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd HH:mm:ss.SSSSSS", "yyyy-MM-dd")
_DAY_END_US = 86_399_000_000  # 23:59:59 in microseconds


def find_table(root: str, path: str) -> str | None:
    """``<root>/<path>.csv.gz`` or ``.csv`` when it exists (local path or any pyarrow URI), else None."""
    import pyarrow.fs as pafs

    for ext in (".csv.gz", ".csv"):
        uri = f"{root.rstrip('/')}/{path}{ext}"
        fs, p = _fs(uri)
        if fs.get_file_info(p).type == pafs.FileType.File:
            return uri
    return None


def with_row_index(df: DataFrame, single_partition: bool = False) -> tuple[DataFrame, int | None]:
    """Add ``_row``: the row's 0-based position in its (single) source file; returns (df, row count or None).

    A gzip file is not splittable, so it is read as one partition and ``monotonically_increasing_id`` is
    already the row index (no extra pass; the count is then unknown here and returned as None). A splittable
    file gets the ``RDD.zipWithIndex`` treatment without leaving the JVM: count the rows per input partition,
    then offset ``monotonically_increasing_id`` (partition id in its upper 31 bits) by the rows of earlier
    partitions. Splits of one file are numbered in file order, so the index is the data-row number.
    ``single_partition``: the caller knows the input is one unsplittable file (``.gz``), which saves
    planning the query as an RDD just to count its partitions.
    """
    from pyspark.sql import functions as F

    if single_partition or df.rdd.getNumPartitions() == 1:
        return df.withColumn("_row", F.monotonically_increasing_id()), None
    df = df.withColumn("_pid", F.spark_partition_id()).withColumn("_mid", F.monotonically_increasing_id())
    counts = sorted((r["_pid"], r["count"]) for r in df.groupBy("_pid").count().collect())
    offsets: list[Column] = []
    total = 0
    for pid, n in counts:
        offsets += [F.lit(pid), F.lit(total)]
        total += n
    offset = F.create_map(*offsets)[F.col("_pid")] if offsets else F.lit(0)
    row = offset + (F.col("_mid") - F.shiftleft(F.col("_pid").cast("bigint"), 33))
    return df.withColumn("_row", row.cast("bigint")).drop("_pid", "_mid"), total


def csv_header(uri: str) -> list[str]:
    """Column names from the first line of a CSV(.gz), read with pyarrow (Spark would run a job for it)."""
    import csv
    import io

    fs, path = _fs(uri)
    compression = "gzip" if uri.endswith(".gz") else None
    with fs.open_input_stream(path, compression=compression) as raw:
        first = io.TextIOWrapper(raw, encoding="utf-8", newline="").readline()
    return next(csv.reader([first]))


def read_csv(spark: SparkSession, uri: str) -> DataFrame:
    """Read one MIMIC CSV(.gz) with every column as string (quotes escaped by doubling, as MIMIC ships)."""
    from pyspark.sql.types import StringType, StructField, StructType

    schema = StructType([StructField(c, StringType()) for c in csv_header(uri)])
    return (
        spark.read.schema(schema)
        .option("header", True)
        .option("escape", '"')
        .option("mode", "PERMISSIVE")
        .csv(storage.spark_uri(uri))  # as pyarrow found it: a local path stays local on a cluster
    )


def parse_time(col: str | Column, end_of_day: bool = False) -> Column:
    """Parse MIMIC datetime/date strings to a timestamp (null when unparseable, never an error).

    ``end_of_day`` moves date-only values to 23:59:59 so that a dated fact never precedes same-day events.
    """
    from pyspark.sql import functions as F

    c = F.trim(F.col(col) if isinstance(col, str) else col)
    ts = F.coalesce(*[F.try_to_timestamp(c, F.lit(fmt)) for fmt in TIME_FORMATS])
    if end_of_day:
        date_only = F.length(c) == 10
        ts = F.when(date_only, F.timestamp_micros(F.unix_micros(ts) + F.lit(_DAY_END_US))).otherwise(ts)
    return ts


def _num(col: str) -> Column:
    from pyspark.sql import functions as F

    return F.trim(F.col(col)).try_cast("float")


def prepare_patients(df: DataFrame, load: Loader) -> DataFrame:
    """``_birth_time``: 1 January of (anchor_year - anchor_age), 00:00 — MIMIC releases only the age in the
    (shifted) anchor year, so this is the earliest birth consistent with it and makes the age at any event
    within the anchor year at least ``anchor_age``. ``_dod_time``: dod at 23:59:59, only for subjects with no
    in-hospital ``admissions.deathtime`` (that exact time wins, see CONVENTIONS)."""
    from pyspark.sql import functions as F

    year = F.trim(F.col("anchor_year")).try_cast("int") - F.trim(F.col("anchor_age")).try_cast("int")
    df = df.withColumn("_birth_time",
                       F.make_timestamp(year, F.lit(1), F.lit(1), F.lit(0), F.lit(0), F.lit(0)))
    dod = F.when(F.trim(F.col("dod")) != "", F.col("dod"))
    admissions = load("admissions")
    if admissions is not None:
        died = (
            admissions.where(parse_time("deathtime").isNotNull())
            .select(F.col("subject_id").alias("_died_subject"))
            .distinct()
        )
        df = df.join(F.broadcast(died), df["subject_id"] == died["_died_subject"], "left")
        dod = F.when(F.col("_died_subject").isNull(), dod)
        df = df.withColumn("_dod_time", dod).drop("_died_subject")
    else:
        df = df.withColumn("_dod_time", dod)
    # keep the raw string (so an unparseable dod becomes a reject); the rule parses with end_of_day
    return df


def prepare_at_discharge(df: DataFrame, load: Loader) -> DataFrame:
    """``_dischtime``: the admission's discharge time (diagnoses and procedures are coded after the stay)."""
    from pyspark.sql import functions as F

    admissions = load("admissions")
    if admissions is None:
        return df.withColumn("_dischtime", F.lit(None).cast("string"))
    disch = admissions.select(F.col("hadm_id").alias("_hadm"), F.col("dischtime").alias("_dischtime"))
    disch = disch.dropDuplicates(["_hadm"])
    return df.join(F.broadcast(disch), df["hadm_id"] == disch["_hadm"], "left").drop("_hadm")


def prepare_value_or_text(df: DataFrame, load: Loader) -> DataFrame:
    """``_numeric`` from valuenum; ``_text`` = value when there is no numeric value."""
    from pyspark.sql import functions as F

    num = _num("valuenum")
    return df.withColumn("_numeric", num).withColumn("_text", F.when(num.isNull(), F.trim(F.col("value"))))


def prepare_prescriptions(df: DataFrame, load: Loader) -> DataFrame:
    """``_med_code``: ``MEDICATION//NDC//<ndc>`` for a real NDC (digits, not all zeros), else
    ``MEDICATION//MIMIC//<drug>``."""
    from pyspark.sql import functions as F

    ndc = F.trim(F.col("ndc"))
    valid = ndc.rlike("^[0-9]{10,11}$") & ~ndc.rlike("^0+$")
    drug = F.concat(F.lit("MEDICATION//MIMIC//"), F.trim(F.col("drug")))
    return df.withColumn("_med_code",
                         F.when(valid, F.concat(F.lit("MEDICATION//NDC//"), ndc)).otherwise(drug))


def prepare_omr(df: DataFrame, load: Loader) -> DataFrame:
    """``_name``/``_numeric``/``_text``: a value like ``120/80`` becomes two rows, ``<name>//SYSTOLIC`` and
    ``<name>//DIASTOLIC`` (``_part`` 0 and 1: the summary counts the source row once); otherwise a number goes
    to ``_numeric`` and anything else to ``_text``."""
    from pyspark.sql import functions as F

    value = F.trim(F.col("result_value"))
    name = F.trim(F.col("result_name"))
    is_pair = value.rlike(r"^[0-9]+(\.[0-9]+)?/[0-9]+(\.[0-9]+)?$")
    parts = F.split(value, "/")
    pair = F.array(
        F.struct(F.concat(name, F.lit("//SYSTOLIC")).alias("n"), parts.getItem(0).alias("v")),
        F.struct(F.concat(name, F.lit("//DIASTOLIC")).alias("n"), parts.getItem(1).alias("v")),
    )
    single = F.array(F.struct(name.alias("n"), value.alias("v")))
    df = df.select("*", F.posexplode(F.when(is_pair, pair).otherwise(single)).alias("_part", "_parts"))
    num = F.col("_parts.v").try_cast("float")
    return (
        df.withColumn("_name", F.col("_parts.n"))
        .withColumn("_numeric", num)
        .withColumn("_text", F.when(num.isNull(), F.col("_parts.v")))
        .drop("_parts")
    )


PREPARE: dict[str, Callable[[DataFrame, Loader], DataFrame]] = {
    "patients": prepare_patients,
    "at_discharge": prepare_at_discharge,
    "value_or_text": prepare_value_or_text,
    "prescriptions": prepare_prescriptions,
    "omr": prepare_omr,
}
