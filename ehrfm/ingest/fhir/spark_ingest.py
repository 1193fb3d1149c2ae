"""The population path: FHIR Bundles / NDJSON files -> a MEDS dataset on disk, with Spark.

Two passes over the records, both running the pure-Python code of the one-patient path
(:mod:`ehrfm.ingest.fhir.spark_rows`), then the shared MEDS writer:

1. **per file** (executors): read the bytes (Spark ``binaryFile``: any Hadoop filesystem), detect
   Bundle vs NDJSON, split into records and map every record whose lookups the file answers itself
   (a Synthea-style patient Bundle: all of them). The rest (NDJSON whose Patient or Medication lives
   in another file, mapper rejects) is kept as JSON with its join keys, with the birth floors and
   Medications each file provides. Written once to a temporary parquet.
2. **cross-file** (executors): pending records ⟕ global birth floor (subject_id) ⟕ Medication (key),
   then the same per-record code.
3. **write**: :func:`ehrfm.ingest.writer.write_meds_dataset` with events, rejects, descriptions,
   subject ids and the reconciling summary. Only aggregates ever reach the driver.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ehrfm.ingest.fhir.bundle import VALIDATE_CHOICES
from ehrfm.ingest.fhir.paths import cleanup, expand_inputs
from ehrfm.ingest.fhir.process import Summary
from ehrfm.ingest.fhir.spark_rows import ROW_SCHEMA, file_rows, pending_rows, to_batch
from ehrfm.ingest.fhir.times import US_PER_DAY, now_us

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def _pass1(validate: str, limit: int, every: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow`` function: batches of (path, content) -> one batch of ROW_SCHEMA rows per file."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            paths, contents = batch.column(0), batch.column(1)
            for i in range(batch.num_rows):
                yield to_batch(list(file_rows(paths[i].as_py(), contents[i].as_py() or b"", validate, limit, every)))

    return run


def _pass2(validate: str, limit: int, every: int) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow`` function: batches of pending records (joined) -> ROW_SCHEMA batches."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            rows = list(pending_rows(batch.to_pylist(), validate, limit, every))
            if rows:
                yield to_batch(rows)

    return run


def _files_df(spark: SparkSession, files: Sequence[tuple[str, int]]) -> DataFrame:
    """(path, content) of every input. Spark's file sources drop zero-length files (they have no split),
    so those are added as rows with empty content (they become "empty file" rejects)."""
    nonempty = [f for f, n in files if n > 0]
    empty = spark.createDataFrame([(f, b"") for f, n in files if n == 0], "path string, content binary")
    if not nonempty:
        return empty
    return spark.read.format("binaryFile").load(nonempty).select("path", "content").unionByName(empty)


def ingest_fhir(
    spark: SparkSession,
    inputs: Sequence[str],
    output: str,
    *,
    validate: str = "auto",
    dataset_name: str = "fhir",
    etl_name: str = "ehrfm.ingest.fhir",
    max_time_us: int | None = None,
    sample_every: int = 50,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    rows_per_shard: int | None = None,
    keep_tmp: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Ingest FHIR Bundle JSON / NDJSON files (plain or .gz) into a MEDS dataset at ``output``.

    ``inputs``: files, folders (searched recursively for *.json, *.ndjson, *.jsonl and their .gz) or
    globs. ``validate``: "full" rejects every mapped-type resource that fails the FHIR R4B/STU3 models;
    "none" never validates; "auto" (default) validates the records the mapper rejects (the validator's
    reason is added) and a deterministic 1-in-``sample_every`` sample of mapped records, reported in
    ``summary["validation_sample"]`` (use "full" to reject on it). ``max_time_us``: far-future limit
    (default: now + 1 day). Returns the summary written to ``output/summary.json``.
    """
    from pyspark.sql import functions as F
    from tqdm import tqdm

    if validate not in VALIDATE_CHOICES:
        raise ValueError(f"validate must be one of {VALIDATE_CHOICES}, got {validate!r}")
    from ehrfm.ingest.writer import write_meds_dataset

    files = expand_inputs(spark, inputs)
    limit = max_time_us if max_time_us is not None else now_us() + US_PER_DAY
    tmp = output.rstrip("/") + "/_fhir_tmp"
    steps = tqdm(total=3, desc="fhir ingest", unit="pass", disable=not progress)
    mode, every = validate, sample_every

    clock = time.perf_counter()
    seconds: dict[str, float] = {}
    # pass 1: per file; the file bytes are decompressed and parsed exactly once
    _files_df(spark, files).mapInArrow(_pass1(mode, limit, every), ROW_SCHEMA).write.mode("overwrite").parquet(
        f"{tmp}/pass1")
    p1 = spark.read.parquet(f"{tmp}/pass1")
    seconds["pass1_files"] = round(time.perf_counter() - clock, 1)
    steps.update()

    # pass 2: cross-file lookups by joins, then the same per-record code for the pending records
    births = p1.where(F.col("kind") == "B").groupBy("subject_id").agg(F.min("floor").alias("floor"))
    meds = (p1.where(F.col("kind") == "M").groupBy("med_key")
            .agg(F.min(F.struct("source_file", "record_index", "payload")).alias("m"))
            .select("med_key", F.col("m.payload").alias("med_payload")))
    pending = (p1.where(F.col("kind") == "P")
               .select("source_file", "record_index", "subject_id", "med_key", "payload")
               .join(births, on="subject_id", how="left").join(meds, on="med_key", how="left"))
    pending.mapInArrow(_pass2(mode, limit, every), ROW_SCHEMA).write.mode("overwrite").parquet(f"{tmp}/pass2")
    out = p1.where(F.col("kind").isin("E", "R", "S", "D", "V")).unionByName(spark.read.parquet(f"{tmp}/pass2"))
    seconds["pass2_cross_file"] = round(time.perf_counter() - clock - sum(seconds.values()), 1)
    steps.update()

    summary = _summary(out)
    summary.update({"inputs": list(inputs), "files": len(files), "validate": validate, "max_time_us": limit})
    events = out.where(F.col("kind") == "E").select(
        "subject_id", F.timestamp_micros("time").alias("time"), "code", "numeric_value", "text_value",
        "encounter_id", "unit", "source")
    rejects = out.where(F.col("kind") == "R").select(
        "source_file", "record_index", "resource_type", "resource_id", "field", "reason")
    descriptions = out.where(F.col("kind") == "D").select("code", F.col("text_value").alias("description"))
    subject_ids = (p1.where(F.col("kind") == "I")
                   .select("subject_id", F.col("patient_ref").alias("source_id")).distinct())
    collisions = subject_ids.groupBy("subject_id").count().where(F.col("count") > 1).count()
    summary["subject_id_collisions"] = int(collisions)
    seconds["summary"] = round(time.perf_counter() - clock - sum(seconds.values()), 1)
    summary["seconds"] = seconds
    steps.set_postfix_str("write MEDS")
    result = write_meds_dataset(
        spark, events, output, dataset_name=dataset_name, etl_name=etl_name, code_descriptions=descriptions,
        rejects=rejects, subject_ids=subject_ids, summary=summary, split_ratios=split_ratios, split_seed=split_seed,
        rows_per_shard=rows_per_shard)
    steps.update()
    steps.close()
    result["seconds"] = {**seconds, "write": round(time.perf_counter() - clock - sum(seconds.values()), 1)}
    if not keep_tmp:
        cleanup(spark, tmp)
    return result


def _summary(out: DataFrame) -> dict[str, Any]:
    """Per resource type counts and the validation sample; only aggregates are collected."""
    from pyspark.sql import functions as F

    s = Summary()
    groups = (out.where(F.col("kind").isin("S", "V")).groupBy("kind", "resource_type", "status")
              .agg(F.sum(F.coalesce("n_records", F.lit(1))).alias("n"), F.sum("n_events").alias("ev")).collect())
    checked = invalid = 0
    for r in groups:
        if r["kind"] == "S":
            s.merge_row(r["resource_type"], {"in": r["n"], r["status"]: r["n"], "events": r["ev"]})
        else:
            checked += r["n"]
            invalid += r["n"] if r["status"] == "invalid" else 0
    examples = []
    if invalid:
        bad = out.where((F.col("kind") == "V") & (F.col("status") == "invalid")).limit(5).collect()
        examples = [f"{r['source_file']}#{r['record_index']}: {r['reason']}" for r in bad]
    result = s.to_dict()
    result["validation_sample"] = {"checked": checked, "invalid": invalid, "examples": examples}
    print(s.table())
    return result
