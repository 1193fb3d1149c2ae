"""The population path: FHIR Bundles / NDJSON files -> a MEDS dataset on disk, with Spark.

Every input is cut into *units* (a whole file, or a byte range of a big plain NDJSON file) that are
streamed in bounded memory (:mod:`ehrfm.ingest.fhir.spark_units`); the per-record code is the
one-patient path's (:mod:`ehrfm.ingest.fhir.spark_rows`):

1. **scan** (executors, cheap): per unit its format, newline count (so a range knows the line number
   of its first line) and gzip problem; one row per unit reaches the driver, which plans the map.
2. **map** (executors): every record mapped once with its unit's own lookups (Patient birth floors,
   Medications; :func:`~ehrfm.ingest.fhir.spark_units.map_unit_joined`), which are written along with the
   rows to a temporary parquet; a record that needs another unit's lookup, or was rejected, waits (``P``).
3. **cross-file** (when records wait): ``P`` rows ⟕ birth floor ⟕ Medication, both aggregated from every
   unit's lookup rows, then the same per-record code. Spark chooses the joins (a shuffle, or a broadcast
   below its size threshold): the lookups, one row per patient, never pass through the driver.
4. **settle** (:mod:`ehrfm.ingest.fhir.spark_settle`): copies of a resource across the whole input become
   ``duplicate`` or conflicting-version rejects, records of subjects without a mapped Patient rejects.
5. **write**: :func:`ehrfm.ingest.writer.write_meds_dataset` with events, rejects, descriptions,
   subject ids and the reconciling summary. Only aggregates and the per-unit facts reach the driver.

Inputs are listed through Hadoop on the driver (:func:`~ehrfm.ingest.fhir.paths.expand_inputs`); the
executors open local files and ``s3://`` / ``gs://`` objects themselves
(:func:`~ehrfm.ingest.fhir.streams.open_binary`). A file on any other scheme (:func:`read_by_hadoop`:
``hdfs://``, ``viewfs://``, ``abfs://``, ``s3a://`` ..., served only by the cluster's Hadoop config, which
Python workers cannot reach) is read by Spark's own Hadoop reader (``binaryFile``: the whole file in one
row) and mapped from memory as one unit (:func:`~ehrfm.ingest.fhir.spark_units.map_unit_given`): no byte
ranges, no scan job, the same rows.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ehrfm import storage
from ehrfm.config.base import ConfigError
from ehrfm.ingest.fhir import jsonio
from ehrfm.ingest.fhir.bundle import VALIDATE_CHOICES
from ehrfm.ingest.fhir.paths import cleanup, expand_inputs
from ehrfm.ingest.fhir.spark_rows import ROW_SCHEMA, pending_rows, to_batch
from ehrfm.ingest.fhir.times import US_PER_DAY, now_us
from ehrfm.ingest.fhir.versions import check_version

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


BATCH_ROWS = 8192  # rows per Arrow batch handed back to Spark (bounds a task's memory)
# plain NDJSON files above this are cut into byte ranges of this size (a few seconds of mapping each)
SPLIT_BYTES = 32 << 20
PARTITION_BYTES = 32 << 20  # target input bytes per task (small files are grouped, big ones split)


def _batches(rows: Iterator[tuple[Any, ...]]) -> Iterator[pa.RecordBatch]:
    """Arrow batches of ROW_SCHEMA rows. Events (most rows) are batched apart from the other kinds, so
    that the columns an event does not use are all-null in its batches and cost nothing to convert
    (:func:`to_batch`); within each kind rows keep their order (nothing downstream reads the order across
    kinds: every later step selects one kind)."""
    events: list[tuple[Any, ...]] = []
    other: list[tuple[Any, ...]] = []
    for r in rows:
        buf = events if r[0] == "E" else other
        buf.append(r)
        if len(buf) >= BATCH_ROWS:
            yield to_batch(buf)
            buf.clear()
    for buf in (events, other):
        if buf:
            yield to_batch(buf)


def _scan_fn() -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow`` function: units -> SCAN_SCHEMA ``U`` rows (unit facts, no lookups: those are found
    and joined in the later steps)."""
    from ehrfm.ingest.fhir.spark_rows import arrow_schema
    from ehrfm.ingest.fhir.spark_units import SCAN_SCHEMA, scan_unit

    schema = arrow_schema(SCAN_SCHEMA)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            for u in batch.to_pylist():
                rows = list(scan_unit(u["path"], u["start"], u["end"], u["mode"], lookups=False))
                yield to_batch(rows, schema)

    return run


def _map_fn(validate: str, limit: int, every: int,
            version: str) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow`` function: units (with their first line number) -> ROW_SCHEMA batches, each unit
    mapped with its own lookups (:func:`~ehrfm.ingest.fhir.spark_units.map_unit_joined`); a unit whose
    ``content`` is given (a file only Hadoop reads) from that content
    (:func:`~ehrfm.ingest.fhir.spark_units.map_unit_given`)."""
    from ehrfm.ingest.fhir.spark_units import map_unit_given, map_unit_joined

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            content = batch.column("content")  # null, or the whole file read by Spark (read_by_hadoop)
            for i, u in enumerate(batch.drop_columns(["content"]).to_pylist()):
                data = content[i]
                if data.is_valid:  # a Buffer over the batch's memory: the file's bytes are not copied
                    yield from _batches(map_unit_given(u, data.as_buffer(), validate, limit, every, version))
                else:
                    yield from _batches(map_unit_joined(u, validate, limit, every, version))

    return run


def _pass2(validate: str, limit: int, every: int,
           version: str) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """``mapInArrow`` function: batches of pending records (joined) -> ROW_SCHEMA batches."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            yield from _batches(pending_rows(batch.to_pylist(), validate, limit, every, version))

    return run


def plan_units(files: Sequence[tuple[str, int]],
               split_bytes: int = SPLIT_BYTES) -> list[tuple[str, int, int, str]]:
    """``(path, start, end, mode)`` work units: a big plain NDJSON file becomes ``range`` units of
    ``split_bytes``; every other file one ``file`` unit (gzip is not splittable; documents are read whole)."""
    from ehrfm.ingest.fhir.streams import sniff

    units: list[tuple[str, int, int, str]] = []
    for path, size in files:
        if size > split_bytes:
            gz, ndjson = sniff(path)
            if not gz and ndjson:
                units += [(path, s, min(s + split_bytes, size), "range") for s in range(0, size, split_bytes)]
                continue
        units.append((path, 0, size, "file"))
    return units


def read_by_hadoop(uri: str) -> bool:
    """Whether an input file is read by Spark's Hadoop reader rather than opened by the executors' Python
    workers: every scheme except local files and the object stores pyarrow serves itself
    (:data:`ehrfm.storage.ARROW_SCHEMES`) — the rule of :func:`ehrfm.storage.filesystem` with a Spark session,
    so ``s3a://`` (Hadoop's connector, the cluster's credentials) is read by Hadoop too."""
    return storage.scheme(uri) not in (None, "file", *storage.ARROW_SCHEMES)


def _hidden_by_spark(name: str) -> bool:
    """Names Spark's file sources skip even when a file is named explicitly (its
    ``HadoopFSUtils.shouldFilterOutPathName``)."""
    return (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith("._COPYING_")


def _glob_escaped(uri: str) -> str:
    """``uri`` with Hadoop's glob characters escaped: Spark's readers take paths as glob patterns, an input
    file's name is literal."""
    return re.sub(r"([\\*?\[\]{}])", r"\\\1", uri)


def _hadoop_units_df(spark: SparkSession, uris: Sequence[str], schema: str) -> DataFrame:
    """One ``schema`` row (``path start end mode``, null facts, ``content``) per file in ``uris``, the whole
    file read by Spark's ``binaryFile`` source (Hadoop's FileSystem, the cluster's config and credentials;
    Spark packs small files into a task). ``path`` is the reader's, which is the listing's URI (both
    Hadoop's ``Path.toString``), so rows name the input as for a file opened by path.

    Raises :class:`~ehrfm.config.base.ConfigError` for a file name that Spark's reader would skip silently."""
    from pyspark.sql import functions as F

    hidden = [u for u in uris if _hidden_by_spark(storage.name(u))]
    if hidden:
        raise ConfigError(f"input={hidden[0]!r}: Spark's Hadoop file reader skips names starting with '_' or "
                          f"'.' (or ending in '._COPYING_'); rename the file (or copy it to a local or s3:// "
                          f"folder)")
    read = spark.read.format("binaryFile").load([_glob_escaped(u) for u in uris])
    cols = [c.strip().split(" ") for c in schema.split(",")]
    given = {"path": F.col("path"), "start": F.lit(0), "end": F.col("length"), "mode": F.lit("file"),
             "content": F.col("content")}
    return read.select([given.get(c, F.lit(None)).cast(t).alias(c) for c, t in cols])


def _units_df(spark: SparkSession, units: Sequence[dict[str, Any]], schema: str,
              parallelism: int) -> DataFrame:
    """A DataFrame of units, partitioned so that tasks get similar byte counts (largest first into
    the lightest partition): many small files share a task, a big file's ranges spread out."""
    total = sum(u["end"] - u["start"] for u in units)
    n = max(1, min(len(units), max(2 * parallelism, -(-total // PARTITION_BYTES))))
    groups: list[list[dict[str, Any]]] = [[] for _ in range(n)]
    loads = [0] * n
    for u in sorted(units, key=lambda u: u["start"] - u["end"]):
        i = loads.index(min(loads))
        groups[i].append(u)
        loads[i] += max(u["end"] - u["start"], 1)
    cols = [c.strip().split(" ")[0] for c in schema.split(",")]
    rdd = spark.sparkContext.parallelize([[tuple(u.get(c) for c in cols) for u in g] for g in groups], n)
    return spark.createDataFrame(rdd.flatMap(lambda g: g), schema)


def _lookups(
    scan: pa.Table,
) -> tuple[dict[str, dict[str, Any]], dict[int, int], dict[str, tuple[str, int, str]]]:
    """From the scan rows: unit facts by (path, start) with ``base`` (line number of the unit's first
    byte), global birth floors (minimum) and Medications (``(path, offset, JSON)``, first by file, then
    position)."""
    facts: dict[str, dict[str, Any]] = {}
    births: dict[int, int] = {}
    med_rows: dict[str, tuple[str, int, str]] = {}
    for r in scan.to_pylist():
        if r["kind"] == "U":
            facts[f"{r['path']}#{r['start']}"] = r
        elif r["kind"] == "B":
            births[r["subject_id"]] = min(r["floor"], births.get(r["subject_id"], r["floor"]))
        elif r["kind"] == "M":
            cand = (r["path"], r["offset"], r["payload"])
            med_rows[r["med_key"]] = min(cand, med_rows.get(r["med_key"], cand))
    by_file: dict[str, list[dict[str, Any]]] = {}
    for f in facts.values():
        by_file.setdefault(f["path"], []).append(f)
    for parts in by_file.values():
        base = 0
        for f in sorted(parts, key=lambda f: f["start"]):
            f["base"] = base
            base += f["newlines"] or 0
    return facts, births, med_rows


def apply_scan(scan: pa.Table, units: list[dict[str, Any]]) -> tuple[
        dict[int, int], dict[str, tuple[str, int, str]], dict[str, dict[str, Any]], bool]:
    """After the scan (both engines): each unit gets its facts (``fmt``, ``base``, ``problem``,
    ``good_len``); returns the birth floors, the Medication rows (``(path, offset, JSON)``) and parsed
    Medications, and whether the lookups are complete (no document inputs)."""
    from ehrfm.ingest.fhir.spark_units import WHOLE

    facts, births, med_rows = _lookups(scan)
    meds = {k: jsonio.loads(v[2]) for k, v in med_rows.items()}
    complete = not any(f["fmt"] == WHOLE for f in facts.values())
    for u in units:
        f = facts[f"{u['path']}#{u['start']}"]
        u.update(fmt=f["fmt"], base=f.get("base", 0), problem=f["problem"], good_len=f["good_len"])
    return births, med_rows, meds, complete


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
    anonymous_subjects: bool = False,
    fhir_version: str = "auto",
) -> dict[str, Any]:
    """Ingest FHIR Bundle JSON / NDJSON files (plain or .gz) into a MEDS dataset at ``output``.

    ``inputs``: files, folders (searched recursively for *.json, *.ndjson, *.jsonl and their .gz) or
    globs. ``validate``: "full" rejects every mapped-type resource that fails the FHIR R4B/STU3 models;
    "none" never validates; "auto" (default) validates the records the mapper rejects (the validator's
    reason is added) and a deterministic 1-in-``sample_every`` sample of mapped records, reported in
    ``summary["validation_sample"]`` (use "full" to reject on it). ``max_time_us``: far-future limit
    (default: now + 1 day). Local folders are walked by real path (:mod:`ehrfm.ingest.fhir.paths`: each
    file once, link cycles skipped and listed in ``summary["skipped_links"]``). Copies of a resource count
    once; records whose subject has no valid Patient are rejected, or kept with ``anonymous_subjects``.
    ``fhir_version``: ``auto`` (each resource validated in the version it is detected in) or the version
    every resource is validated in (docs/fhir_versions.md).
    Returns the summary written to ``output/summary.json``.
    """
    from pyspark.sql import functions as F
    from tqdm import tqdm

    if validate not in VALIDATE_CHOICES:
        raise ValueError(f"validate must be one of {VALIDATE_CHOICES}, got {validate!r}")
    fhir_version = check_version(fhir_version)
    from ehrfm.ingest.writer import write_meds_dataset

    found = expand_inputs(spark, inputs)
    files = found.files
    limit = max_time_us if max_time_us is not None else now_us() + US_PER_DAY
    # inside the output: a stage writes the output in a staging folder (ehrfm.atomic), which takes it along;
    # written in place (a URI, a direct call), a killed run's leftover is removed before this run starts
    tmp = output.rstrip("/") + "/_fhir_tmp"
    cleanup(spark, tmp)
    steps = tqdm(total=5, desc="fhir ingest", unit="step", disable=not progress)
    mode, every = validate, sample_every

    clock = time.perf_counter()
    seconds: dict[str, float] = {}
    parallelism = spark.sparkContext.defaultParallelism
    hadoop = [path for path, _ in files if read_by_hadoop(path)]  # one whole-file unit each, read by Spark
    units = [dict(zip(("path", "start", "end", "mode"), u, strict=True))
             for u in plan_units([f for f in files if not read_by_hadoop(f[0])], SPLIT_BYTES)]
    # 1. scan: formats, line numbers of the ranges (one row per unit, collected: the driver plans the map)
    from ehrfm.ingest.fhir.spark_units import SCAN_SCHEMA, UNIT_SCHEMA

    if units:
        scan = _units_df(spark, units, UNIT_SCHEMA, parallelism).mapInArrow(_scan_fn(), SCAN_SCHEMA).toArrow()
        apply_scan(scan, units)  # only U rows: the lookups are left to the executors and joins
    seconds["scan"] = round(time.perf_counter() - clock, 1)
    steps.update()

    # 2. map every record once; rows kept in a temporary parquet (the summary and the writer read it)
    unit_schema = UNIT_SCHEMA + ", fmt string, base long, problem string, good_len long, content binary"
    parts = ([_units_df(spark, units, unit_schema, parallelism)] if units else []) + (
        [_hadoop_units_df(spark, hadoop, unit_schema)] if hadoop else [])
    unit_rows = parts[0] if len(parts) == 1 else parts[0].unionByName(parts[1])
    (unit_rows
     .mapInArrow(_map_fn(mode, limit, every, fhir_version), ROW_SCHEMA)
     .write.mode("overwrite").parquet(f"{tmp}/pass1"))
    p1 = spark.read.parquet(f"{tmp}/pass1")
    out = p1.where(F.col("kind").isin("E", "R", "K", "D", "V"))
    seconds["map"] = round(time.perf_counter() - clock - sum(seconds.values()), 1)
    steps.update()

    # 3. cross-file lookups for what waited: joins with the lookup rows of every unit, same per-record code
    if p1.where(F.col("kind") == "P").limit(1).count():
        (_pending(p1).mapInArrow(_pass2(mode, limit, every, fhir_version), ROW_SCHEMA)
         .write.mode("overwrite").parquet(f"{tmp}/pass2"))
        out = out.unionByName(spark.read.parquet(f"{tmp}/pass2"))
    seconds["cross_file"] = round(max(0.0, time.perf_counter() - clock - sum(seconds.values())), 1)
    steps.update()

    from ehrfm.ingest.fhir.spark_settle import outcome_counts, settle

    settled, rejects, outcomes = settle(out, f"{tmp}/settled", anonymous_subjects)
    seconds["settle"] = round(time.perf_counter() - clock - sum(seconds.values()), 1)
    steps.update()
    summary = _summary(out, outcome_counts(outcomes).to_dict())
    summary.update({"inputs": list(inputs), "files": len(files), "validate": validate, "max_time_us": limit,
                    "skipped_links": found.skipped_links, "anonymous_subjects": anonymous_subjects,
                    "fhir_version": fhir_version})
    events = settled.select(
        "subject_id", F.timestamp_micros("time").alias("time"), "code", "numeric_value", "text_value",
        "encounter_id", "unit", "source")
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
        rejects=rejects, subject_ids=subject_ids, summary=summary, split_ratios=split_ratios,
        split_seed=split_seed,
        rows_per_shard=rows_per_shard)
    steps.update()
    steps.close()
    result["seconds"] = {**seconds, "write": round(time.perf_counter() - clock - sum(seconds.values()), 1)}
    if not keep_tmp:
        cleanup(spark, tmp)
    return result


def _pending(p1: DataFrame) -> DataFrame:
    """The ``P`` rows of the map output ``p1`` with the global birth floor of their subject (``floor``: the
    minimum over every unit's ``B`` rows) and their Medication (``med_payload``: the first ``M`` row by
    (source_file, record_index, payload), as the local engine chooses it). No join hint: a broadcast would
    gather the lookups (one row per patient) on the driver; Spark still broadcasts them when they are
    below its threshold (``spark.sql.autoBroadcastJoinThreshold``, bounded)."""
    from pyspark.sql import functions as F

    births = p1.where(F.col("kind") == "B").groupBy("subject_id").agg(F.min("floor").alias("floor"))
    meds = (p1.where(F.col("kind") == "M").groupBy("med_key")
            .agg(F.min(F.struct("source_file", "record_index", "payload")).alias("m"))
            .select("med_key", F.col("m.payload").alias("med_payload")))
    return (p1.where(F.col("kind") == "P")
            .select("source_file", "record_index", "subject_id", "med_key", "payload")
            .join(births, on="subject_id", how="left")
            .join(meds, on="med_key", how="left"))


def _summary(out: DataFrame, counts: dict[str, Any]) -> dict[str, Any]:
    """``counts`` (the settled per resource type counts) and the validation sample; only aggregates are
    collected."""
    from pyspark.sql import functions as F

    groups = (out.where(F.col("kind") == "V").groupBy("status").agg(F.count(F.lit(1)).alias("n")).collect())
    checked = sum(r["n"] for r in groups)
    invalid = sum(r["n"] for r in groups if r["status"] == "invalid")
    examples = []
    if invalid:
        bad = out.where((F.col("kind") == "V") & (F.col("status") == "invalid")).limit(5).collect()
        examples = [f"{r['source_file']}#{r['record_index']}: {r['reason']}" for r in bad]
    return {**counts, "validation_sample": {"checked": checked, "invalid": invalid, "examples": examples}}
