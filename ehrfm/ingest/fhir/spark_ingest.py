"""The population path: FHIR Bundles / NDJSON files -> a MEDS dataset on disk, with Spark.

Three passes, all through the same pure-Python code as the one-patient path:

1. **split** (per file, on executors): read each file's bytes (Spark ``binaryFile``: any Hadoop
   filesystem), detect Bundle vs NDJSON, split into records (:mod:`records`). Types we do not map are
   counted and dropped here (no payload travels); every other record keeps its resource as JSON
   plus its join keys (subject_id, Medication key) and, for a Patient, its birth floor. Written to a
   temporary parquet so the file bytes are read once.
2. **map**: records ⟕ births (subject_id) ⟕ Medications (key) → :func:`process.process_record`
   per record, on executors. Output (events, rejects, per-record status, code descriptions) goes to a
   second temporary parquet.
3. **write**: :func:`ehrfm.ingest.writer.write_meds_dataset` with events, rejects, descriptions,
   subject ids and the reconciling summary. Only aggregates ever reach the driver.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ehrfm.ingest.fhir.bundle import VALIDATE_CHOICES
from ehrfm.ingest.fhir.mapper import MapContext, birth_floor, reference_id, subject_of
from ehrfm.ingest.fhir.paths import cleanup, expand_inputs
from ehrfm.ingest.fhir.process import MAP, MAPPED, REJECTED, SKIPPED, Summary, classify, process_record
from ehrfm.ingest.fhir.records import Record, iter_file_records
from ehrfm.ingest.fhir.rules import load_rules
from ehrfm.ingest.fhir.times import US_PER_DAY, now_us
from ehrfm.ingest.fhir.validate import validate_resource

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

UNREADABLE = "<unreadable>"
_MED_TYPES = ("MedicationRequest", "MedicationAdministration", "MedicationStatement")

SPLIT_SCHEMA = (
    "source_file string, record_index long, resource_type string, resource_id string, kind string, "
    "subject_id long, patient_ref string, birth_floor long, med_key string, payload string, "
    "error string, field string"
)
MAPPED_SCHEMA = (
    "kind string, subject_id long, time long, code string, numeric_value float, text_value string, "
    "encounter_id string, unit string, source string, source_file string, record_index long, "
    "resource_type string, resource_id string, field string, reason string, status string, n_events int"
)
_NULL_EVENT = (None,) * 8
_NULL_REJECT = (None,) * 6


def split_file(path: str, content: bytes) -> Iterator[tuple[Any, ...]]:
    """Pass 1 rows (SPLIT_SCHEMA) for one file. ``kind``: "record" (to map), "skipped", or "medication"
    (a Medication: counted as skipped, kept as a lookup target for medicationReference)."""
    rules = load_rules()
    for rec in iter_file_records(path, bytes(content)):
        rtype, rid, res = rec.resource_type, rec.resource_id, rec.resource
        if rec.error is None and rtype is not None and res is not None and classify(rtype, rules) != MAP:
            if rtype == "Medication" and rid:
                yield (path, rec.record_index, rtype, rid, "medication", None, None, None,
                       f"Medication/{rid}", json.dumps(res), None, None)
                continue
            if classify(rtype, rules) == SKIPPED:
                yield (path, rec.record_index, rtype, rid, "skipped", None, None, None, None, None, None, None)
                continue
        sid = subject_of(res, rules) if res is not None and rec.error is None else None
        pref, floor, med_key = None, None, None
        if sid is not None and res is not None:
            if rtype == "Patient":
                pref, floor = rid, birth_floor(res, rules)
            else:
                pref = next((reference_id(res.get(f)) for f in rules.subject_fields if res.get(f) is not None), None)
            if rtype in _MED_TYPES:
                ref = res.get("medicationReference") or (res.get("medication") or {}).get("reference")
                target = ref.get("reference") if isinstance(ref, dict) else None
                if isinstance(target, str) and not target.startswith("#"):
                    med_key = f"Medication/{reference_id(target)}"
        yield (path, rec.record_index, rtype, rid, "record", sid, pref, floor, med_key,
               json.dumps(res) if res is not None else None, rec.error, rec.field)


def _sampled(source_file: str, index: int, every: int) -> bool:
    """Deterministic 1-in-``every`` sample of records (crc32 of the location)."""
    return every > 0 and zlib.crc32(f"{source_file}#{index}".encode()) % every == 0


def map_rows(rows: Iterable[Any], validate: str, max_time_us: int, sample_every: int) -> Iterator[tuple[Any, ...]]:
    """Pass 2 on one partition: joined split rows -> MAPPED_SCHEMA rows (kind E event, R reject,
    S status, D description, V validation-sample result)."""
    rules = load_rules()
    ctx = MapContext(rules=rules, max_time_us=max_time_us)
    for row in rows:
        res = json.loads(row.payload) if row.payload is not None else None
        rec = Record(row.source_file, row.record_index, resource=res, error=row.error, field=row.field)
        ctx.birth_floor_us = {row.subject_id: row.floor} if row.floor is not None else {}
        ctx.medications = {row.med_key: json.loads(row.med_payload)} if row.med_payload is not None else {}
        out = process_record(rec, ctx, validate == "full")
        if validate == "auto" and res is not None and rec.error is None:
            out = _auto_validation(out, rec, res, ctx, sample_every)
            if out.status == MAPPED and _sampled(rec.source_file, rec.record_index, sample_every):
                problem = validate_resource(res, rules)
                yield ("V", *_NULL_EVENT, rec.source_file, rec.record_index, rec.resource_type, rec.resource_id,
                       problem[0] if problem else None, problem[1] if problem else None, "invalid" if problem else "valid", 0)
        key = rec.resource_type or UNREADABLE
        yield ("S", *_NULL_EVENT, None, None, key, None, None, None, out.status, len(out.events))
        for e in out.events:
            yield ("E", e["subject_id"], e["time"], e["code"], e["numeric_value"], e["text_value"],
                   e["encounter_id"], e["unit"], e["source"], *_NULL_REJECT, None, None)
        for r in out.rejects:
            yield ("R", *_NULL_EVENT, r["source_file"], r["record_index"], r["resource_type"], r["resource_id"],
                   r["field"], r["reason"], None, None)
    for code, desc in ctx.descriptions.items():
        yield ("D", None, None, code, None, desc, *(None,) * 11)


def _auto_validation(out: Any, rec: Record, res: dict[str, Any], ctx: MapContext, sample_every: int) -> Any:
    """``auto``: records the mapper rejected are also validated, and the validator's finding is added
    to the reason (it usually names the root cause, e.g. a malformed field the mapper tripped on)."""
    if out.status == REJECTED and out.rejects:
        problem = validate_resource(res, ctx.rules)
        if problem is not None:
            r = out.rejects[0]
            r["reason"] = f"{r['reason']}; FHIR validation: {problem[1]}"
            r["field"] = r["field"] or problem[0]
    return out


def _split_rows(spark: SparkSession, files: Sequence[tuple[str, int]]) -> Any:
    """Pass-1 rows of all files as an RDD. Spark's file sources drop zero-length files (they have no
    split), so those go through :func:`split_file` from a parallelized list instead (-> "empty file")."""
    nonempty = [f for f, n in files if n > 0]
    empty = [f for f, n in files if n == 0]
    rdd = spark.sparkContext.emptyRDD()
    if nonempty:
        raw = spark.read.format("binaryFile").load(nonempty).select("path", "content")
        rdd = raw.rdd.flatMap(lambda r: split_file(r.path, r.content))
    if empty:
        rdd = rdd.union(spark.sparkContext.parallelize(empty, 1).flatMap(lambda p: split_file(p, b"")))
    return rdd


def ingest_fhir(
    spark: SparkSession,
    inputs: Sequence[str],
    output: str,
    *,
    validate: str = "auto",
    dataset_name: str = "fhir",
    etl_name: str = "ehrfm.ingest.fhir",
    max_time_us: int | None = None,
    sample_every: int = 20,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
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

    # pass 1: files -> records (+ join keys), persisted so file bytes are decompressed/parsed once
    steps.set_postfix_str(f"split {len(files)} files")
    split = _split_rows(spark, files)
    spark.createDataFrame(split, SPLIT_SCHEMA).write.mode("overwrite").parquet(f"{tmp}/records")
    recs = spark.read.parquet(f"{tmp}/records")
    steps.update()

    # pass 2: resolve cross-file references with joins, then map every record on the executors
    births = (recs.where(F.col("birth_floor").isNotNull()).groupBy("subject_id")
              .agg(F.min("birth_floor").alias("floor")))
    meds = (recs.where(F.col("kind") == "medication")
            .groupBy("med_key").agg(F.min(F.struct("source_file", "record_index", "payload")).alias("m"))
            .select("med_key", F.col("m.payload").alias("med_payload")))
    todo = (recs.where(F.col("kind") == "record")
            .join(births, on="subject_id", how="left").join(meds, on="med_key", how="left"))
    mode, every = validate, sample_every
    mapped = todo.rdd.mapPartitions(lambda rows: map_rows(rows, mode, limit, every))
    spark.createDataFrame(mapped, MAPPED_SCHEMA).write.mode("overwrite").parquet(f"{tmp}/mapped")
    out = spark.read.parquet(f"{tmp}/mapped")
    steps.update()

    summary = _summary(recs, out)
    summary.update({"inputs": list(inputs), "files": len(files), "validate": validate, "max_time_us": limit})
    events = out.where(F.col("kind") == "E").select(
        "subject_id", F.timestamp_micros("time").alias("time"), "code", "numeric_value", "text_value",
        "encounter_id", "unit", "source")
    rejects = out.where(F.col("kind") == "R").select(
        "source_file", "record_index", "resource_type", "resource_id", "field", "reason")
    descriptions = out.where(F.col("kind") == "D").select("code", F.col("text_value").alias("description"))
    subject_ids = (recs.where(F.col("subject_id").isNotNull() & F.col("patient_ref").isNotNull())
                   .select("subject_id", F.col("patient_ref").alias("source_id")).distinct())
    collisions = subject_ids.groupBy("subject_id").count().where(F.col("count") > 1).count()
    summary["subject_id_collisions"] = int(collisions)
    steps.set_postfix_str("write MEDS")
    result = write_meds_dataset(
        spark, events, output, dataset_name=dataset_name, etl_name=etl_name, code_descriptions=descriptions,
        rejects=rejects, subject_ids=subject_ids, summary=summary, split_ratios=split_ratios, split_seed=split_seed)
    steps.update()
    steps.close()
    if not keep_tmp:
        cleanup(spark, tmp)
    return result


def _summary(recs: DataFrame, out: DataFrame) -> dict[str, Any]:
    """Per resource type counts (only aggregates are collected) and the validation sample."""
    from pyspark.sql import functions as F

    s = Summary()
    skipped = recs.where(F.col("kind").isin("skipped", "medication")).groupBy("resource_type").count().collect()
    for r in skipped:
        s.merge_row(r["resource_type"], {"in": r["count"], SKIPPED: r["count"]})
    status = (out.where(F.col("kind") == "S").groupBy("resource_type", "status")
              .agg(F.count(F.lit(1)).alias("n"), F.sum("n_events").alias("ev")).collect())
    for r in status:
        s.merge_row(r["resource_type"], {"in": r["n"], r["status"]: r["n"], "events": r["ev"]})
    sample = out.where(F.col("kind") == "V")
    checked = sample.count()
    invalid = sample.where(F.col("status") == "invalid")
    examples = [f"{r['source_file']}#{r['record_index']}: {r['reason']}" for r in invalid.limit(5).collect()]
    result = s.to_dict()
    result["validation_sample"] = {"checked": checked, "invalid": invalid.count(), "examples": examples}
    print(s.table())
    return result
