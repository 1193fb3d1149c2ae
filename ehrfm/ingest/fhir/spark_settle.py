"""Settle the Spark path's per-record outcomes with the rules of :mod:`ehrfm.ingest.fhir.dedup`: copies of
one resource across the whole input (the decision per group of copies is :func:`~ehrfm.ingest.fhir.dedup.
resolve`, run on the executors), then records whose subject has no mapped Patient.

Every record left the map step as one ``K`` row (its outcome before settling) plus its ``E`` / ``R`` rows.
A record whose outcome changes here loses its events and its own rejects; a new reject takes their place
when it became ``rejected``. Only the groups with more than one copy reach the Python function, and the
changed records are usually few, so the joins against the events are cheap (Spark broadcasts them).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ehrfm.ingest.fhir.dedup import NO_PATIENT, ORPHAN_PREFIX, Copy, resolve
from ehrfm.ingest.fhir.process import MAPPED, REJECTED, Summary

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame

LOC = ["source_file", "record_index"]
K_COLUMNS = ["source_file", "record_index", "resource_type", "resource_id", "status", "n_events",
             "subject_id", "field", "reason", "updated", "digest"]
_DECIDED = "source_file string, record_index long, new_status string, new_field string, new_reason string"


def resolve_group(df: pd.DataFrame) -> pd.DataFrame:
    """``applyInPandas`` function: the K rows of the copies of one (resourceType, id) -> the losers'
    decisions (:data:`_DECIDED` columns)."""
    import pandas as pd

    rows: list[dict[Any, Any]] = df.to_dict("records")
    copies = [Copy(r["source_file"], int(r["record_index"]),
                   None if pd.isna(r["updated"]) else int(r["updated"]), r["digest"]) for r in rows]
    return pd.DataFrame([(f, i, d.status, d.field, d.reason) for (f, i), d in resolve(copies).items()],
                        columns=["source_file", "record_index", "new_status", "new_field", "new_reason"])


def settle(out: DataFrame, work: str, anonymous_subjects: bool) -> tuple[DataFrame, DataFrame, DataFrame]:
    """``(events, rejects, outcomes)`` of the rows ``out`` of the map steps: E rows and R rows after
    settling, and the final K rows (written to ``work``, a folder of this job, so the later steps do not
    recompute them)."""
    from pyspark.sql import functions as F

    k = out.where(F.col("kind") == "K").select(*K_COLUMNS)
    keyed = k.where(F.col("digest").isNotNull())
    key = ["resource_type", "resource_id"]
    multi = keyed.join(keyed.groupBy(*key).count().where(F.col("count") > 1).select(*key), key, "left_semi")
    decided = multi.groupBy(*key).applyInPandas(resolve_group, _DECIDED)
    changed = F.col("new_status").isNotNull()
    k = (k.join(decided, LOC, "left")
         .withColumn("status", F.coalesce("new_status", "status"))
         .withColumn("field", F.when(changed, F.col("new_field")).otherwise(F.col("field")))
         .withColumn("reason", F.when(changed, F.col("new_reason")).otherwise(F.col("reason")))
         .withColumn("n_events", F.when(changed, F.lit(0)).otherwise(F.col("n_events")))
         .withColumn("changed", changed)
         .drop("new_status", "new_field", "new_reason"))
    if not anonymous_subjects:
        patients = (k.where((F.col("resource_type") == "Patient") & F.col("subject_id").isNotNull())
                    .groupBy("subject_id")
                    .agg(F.max((F.col("status") == MAPPED).cast("int")).alias("ok"),
                         F.min(F.when(F.col("status") == REJECTED, F.col("reason"))).alias("why")))
        orphan = ((F.col("status") == MAPPED) & (F.col("resource_type") != "Patient")
                  & (F.coalesce("ok", F.lit(0)) == 0))
        k = (k.join(patients, "subject_id", "left")
             .withColumn("orphan", orphan)
             .withColumn("status", F.when(F.col("orphan"), F.lit(REJECTED)).otherwise(F.col("status")))
             .withColumn("reason", F.when(F.col("orphan"), F.concat(F.lit(ORPHAN_PREFIX),
                                                                   F.coalesce("why", F.lit(NO_PATIENT))))
                         .otherwise(F.col("reason")))
             .withColumn("n_events", F.when(F.col("orphan"), F.lit(0)).otherwise(F.col("n_events")))
             .withColumn("changed", F.col("changed") | F.col("orphan"))
             .drop("ok", "why", "orphan"))
    k.select(*K_COLUMNS, "changed").write.mode("overwrite").parquet(work)
    outcomes = out.sparkSession.read.parquet(work)
    moved = outcomes.where(F.col("changed"))
    events = out.where(F.col("kind") == "E").join(moved.select(*LOC), LOC, "left_anti")
    reject_cols = ["source_file", "record_index", "resource_type", "resource_id", "field", "reason"]
    rejects = (out.where(F.col("kind") == "R").join(moved.select(*LOC), LOC, "left_anti")
               .select(*reject_cols)
               .unionByName(moved.where(F.col("status") == REJECTED).select(*reject_cols)))
    return events, rejects, outcomes


def outcome_counts(outcomes: DataFrame) -> Summary:
    """Per resource type counts of the settled outcomes (only aggregates reach the driver)."""
    from pyspark.sql import functions as F

    s = Summary()
    for r in (outcomes.groupBy("resource_type", "status")
              .agg(F.count(F.lit(1)).alias("n"), F.sum("n_events").alias("ev")).collect()):
        s.merge_row(r["resource_type"], {"in": r["n"], r["status"]: r["n"], "events": r["ev"]})
    return s

