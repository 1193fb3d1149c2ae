"""The single-machine FHIR engine (``--engine local``): the Spark path's steps with a process pool instead of
executors and polars instead of Spark SQL, then the local MEDS writer; no JVM.

Spark's fixed costs (JVM start, per-stage scheduling, Arrow to JVM rows, a parquet round trip per pass, the
shuffles of settling) are most of a Spark ``local[*]`` run on one machine; the per-record work is the same
Python either way. So this engine runs the *same* per-unit functions
(:func:`~ehrfm.ingest.fhir.spark_units.scan_unit`, :func:`~ehrfm.ingest.fhir.spark_units.map_unit`,
:func:`~ehrfm.ingest.fhir.spark_rows.pending_rows`, :func:`~ehrfm.ingest.fhir.dedup.resolve`) on the same
work units, one worker process per core, and replaces only the joins and aggregates of
:mod:`~ehrfm.ingest.fhir.spark_ingest` and :mod:`~ehrfm.ingest.fhir.spark_settle` with their polars twins.
``tests/ingest/test_fhir_local.py`` checks that both engines write the same dataset.

Inputs are local files, folders or globs (URIs need the Spark engine, which reads through Hadoop).
"""

from __future__ import annotations

import glob
import os
import pickle
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ehrfm import storage
from ehrfm.config.base import ConfigError
from ehrfm.ingest.fhir.bundle import VALIDATE_CHOICES
from ehrfm.ingest.fhir.paths import INPUT_SUFFIXES, Inputs, LocalWalk
from ehrfm.ingest.fhir.times import US_PER_DAY, now_us
from ehrfm.ingest.fhir.versions import check_version

if TYPE_CHECKING:
    import polars as pl

# the lookups every map task needs, set once per worker process (not shipped with every unit)
_LOOKUP: dict[str, Any] = {}


def expand_local_inputs(inputs: Sequence[str]) -> Inputs:
    """:func:`~ehrfm.ingest.fhir.paths.expand_inputs` for local paths, without Hadoop: the same
    ``file:``-prefixed absolute paths (so the rows name the same ``source_file``), the same walk and errors.
    Raises :class:`~ehrfm.config.base.ConfigError` for a URI that is not ``file:``."""
    if isinstance(inputs, str):
        inputs = [inputs]
    walk = LocalWalk()
    for item in inputs:
        if storage.is_remote(item):
            raise ConfigError(f"input={item!r}: the local engine reads local files only (use --engine spark "
                              "for other file systems)")
        path = os.path.normpath(storage.local_path(item))  # a file: URI percent-decoded, as stages read it
        matches = [m for m in (sorted(glob.glob(path)) if glob.has_magic(path) else [path])
                   if os.path.exists(m)]
        if not matches:
            raise ConfigError(f"input={item!r}: no such file, folder or glob match")
        for m in matches:
            (walk.add_dir if os.path.isdir(m) else walk.add_file)(m)
    found = {"file:" + path: size for path, size in walk.files.values()}
    if not found:
        raise ConfigError(f"input={list(inputs)}: no FHIR input files ({', '.join(INPUT_SUFFIXES)}) there")
    return Inputs(sorted(found.items()), walk.skipped)


def _scan_task(unit: dict[str, Any]) -> list[tuple[Any, ...]]:
    from ehrfm.ingest.fhir.spark_units import scan_unit

    return list(scan_unit(unit["path"], unit["start"], unit["end"], unit["mode"]))


def _lookups_of(path: str) -> tuple[dict[int, int], dict[str, dict[str, Any]]]:
    """The (births, meds) pickled at ``path`` by the driver, read once per worker process."""
    if _LOOKUP.get("path") != path:
        import pickle

        with open(path, "rb") as f:
            births, meds = pickle.load(f)  # noqa: S301 - written by this job's own driver, a moment ago
        _LOOKUP.update(path=path, births=births, meds=meds)
    return _LOOKUP["births"], _LOOKUP["meds"]


def _map_task(unit: dict[str, Any], out: str, lookups: str, complete: bool, validate: str, limit: int,
              every: int, version: str) -> int:
    """Map one unit into the parquet file ``out`` (ROW_SCHEMA) with the lookups pickled at ``lookups``;
    returns its row count."""
    import pyarrow.parquet as pq

    from ehrfm.ingest.fhir.spark_ingest import _batches
    from ehrfm.ingest.fhir.spark_rows import ARROW_SCHEMA
    from ehrfm.ingest.fhir.spark_units import map_unit

    n = 0
    with pq.ParquetWriter(out, ARROW_SCHEMA, compression="none") as w:
        births, meds = _lookups_of(lookups)
        for batch in _batches(map_unit(unit, births, meds, complete, validate, limit, every, version)):
            w.write_batch(batch)
            n += batch.num_rows
    return n


def _pending_task(rows: list[dict[str, Any]], out: str, validate: str, limit: int, every: int,
                  version: str) -> int:
    import pyarrow.parquet as pq

    from ehrfm.ingest.fhir.spark_ingest import _batches
    from ehrfm.ingest.fhir.spark_rows import ARROW_SCHEMA, pending_rows

    n = 0
    with pq.ParquetWriter(out, ARROW_SCHEMA, compression="none") as w:
        for batch in _batches(pending_rows(rows, validate, limit, every, version)):
            w.write_batch(batch)
            n += batch.num_rows
    return n


def _chunks(items: list[Any], n: int) -> Iterator[list[Any]]:
    size = max(1, -(-len(items) // n))
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _cross_file(pool: ProcessPoolExecutor, p1: pl.LazyFrame, births: dict[int, int],
                med_rows: dict[str, tuple[str, int, str]], tmp: str, workers: int, args: tuple[Any, ...]
                ) -> pl.LazyFrame:
    """Step 3 of the Spark path with polars: the records that waited, joined with the global birth floor and
    Medication (the first by (source_file, record_index, payload), as Spark's min of a struct), mapped by
    the same :func:`~ehrfm.ingest.fhir.spark_rows.pending_rows` in the pool."""
    import polars as pl

    lk_schema = {"kind": pl.String, "subject_id": pl.Int64, "floor": pl.Int64, "med_key": pl.String,
                 "payload": pl.String, "source_file": pl.String, "record_index": pl.Int64}
    scan_lk = pl.DataFrame(
        [("B", k, v, None, None, None, None) for k, v in births.items()]
        + [("M", None, None, k, v[2], v[0], v[1]) for k, v in med_rows.items()],
        schema=lk_schema, orient="row")
    lk = pl.concat([p1.filter(pl.col("kind").is_in(["B", "M"])).select(list(lk_schema)).collect(), scan_lk])
    births_df = (lk.filter(pl.col("kind") == "B").group_by("subject_id").agg(pl.col("floor").min()))
    meds_df = (lk.filter(pl.col("kind") == "M").sort(["med_key", "source_file", "record_index", "payload"],
                                                     nulls_last=False)
               .group_by("med_key", maintain_order=True).first()
               .select("med_key", pl.col("payload").alias("med_payload")))
    pending = (p1.filter(pl.col("kind") == "P")
               .select("source_file", "record_index", "subject_id", "med_key", "payload").collect()
               .join(births_df, on="subject_id", how="left")
               .join(meds_df, on="med_key", how="left"))
    rows = pending.to_dicts()
    outs = [os.path.join(tmp, f"pass2-{i}.parquet") for i in range(workers)]
    futures = [pool.submit(_pending_task, part, out, *args)
               for part, out in zip(_chunks(rows, workers), outs, strict=False)]
    for f in futures:
        f.result()
    return pl.scan_parquet([o for o in outs if os.path.exists(o)])


def settle_local(out: pl.LazyFrame, anonymous_subjects: bool) -> tuple[pl.LazyFrame, pl.LazyFrame,
                                                                        pl.DataFrame]:
    """:func:`ehrfm.ingest.fhir.spark_settle.settle` with polars: ``(events, rejects, outcomes)`` of the map
    rows ``out`` (lazy: only the K rows are held in memory; events and rejects stay lazy for the writer).
    Copies are decided by the same :func:`~ehrfm.ingest.fhir.dedup.resolve` per group."""
    import polars as pl

    from ehrfm.ingest.fhir.dedup import NO_PATIENT, ORPHAN_PREFIX, Copy, resolve
    from ehrfm.ingest.fhir.process import MAPPED, REJECTED
    from ehrfm.ingest.fhir.spark_settle import K_COLUMNS, LOC

    k = out.filter(pl.col("kind") == "K").select(K_COLUMNS).collect()
    key = ["resource_type", "resource_id"]
    keyed = k.filter(pl.col("digest").is_not_null())
    multi = keyed.filter(pl.len().over(key) > 1)
    decided: list[tuple[str, int, str, str | None, str | None]] = []
    for _, group in multi.group_by(key):
        copies = [Copy(r["source_file"], int(r["record_index"]), r["updated"], r["digest"])
                  for r in group.iter_rows(named=True)]
        decided += [(f, i, d.status, d.field, d.reason) for (f, i), d in resolve(copies).items()]
    dec = pl.DataFrame(decided, schema={"source_file": pl.String, "record_index": pl.Int64,
                                        "new_status": pl.String, "new_field": pl.String,
                                        "new_reason": pl.String}, orient="row")
    changed = pl.col("new_status").is_not_null()
    k = (k.join(dec, on=LOC, how="left")
         .with_columns(pl.coalesce("new_status", "status").alias("status"),
                       pl.when(changed).then(pl.col("new_field")).otherwise(pl.col("field")).alias("field"),
                       pl.when(changed).then(pl.col("new_reason")).otherwise(pl.col("reason")).alias("reason"),
                       pl.when(changed).then(pl.lit(0, pl.Int64)).otherwise(pl.col("n_events"))
                       .alias("n_events"),
                       changed.alias("changed"))
         .drop("new_status", "new_field", "new_reason"))
    if not anonymous_subjects:
        patients = (k.filter((pl.col("resource_type") == "Patient") & pl.col("subject_id").is_not_null())
                    .group_by("subject_id")
                    .agg((pl.col("status") == MAPPED).cast(pl.Int32).max().alias("ok"),
                         pl.col("reason").filter(pl.col("status") == REJECTED).min().alias("why")))
        orphan = ((pl.col("status") == MAPPED) & (pl.col("resource_type") != "Patient")
                  & (pl.col("ok").fill_null(0) == 0))
        k = (k.join(patients, on="subject_id", how="left")
             .with_columns(orphan.alias("orphan"))
             .with_columns(
                 pl.when(pl.col("orphan")).then(pl.lit(REJECTED)).otherwise(pl.col("status")).alias("status"),
                 pl.when(pl.col("orphan"))
                 .then(pl.lit(ORPHAN_PREFIX) + pl.col("why").fill_null(NO_PATIENT))
                 .otherwise(pl.col("reason")).alias("reason"),
                 pl.when(pl.col("orphan")).then(pl.lit(0, pl.Int64)).otherwise(pl.col("n_events"))
                 .alias("n_events"),
                 (pl.col("changed") | pl.col("orphan")).alias("changed"))
             .drop("ok", "why", "orphan"))
    outcomes = k.select(*K_COLUMNS, "changed")
    moved = outcomes.filter(pl.col("changed")).select(LOC).lazy()
    events = out.filter(pl.col("kind") == "E").join(moved, on=LOC, how="anti")
    reject_cols = ["source_file", "record_index", "resource_type", "resource_id", "field", "reason"]
    rejects = pl.concat([
        out.filter(pl.col("kind") == "R").join(moved, on=LOC, how="anti").select(reject_cols),
        outcomes.filter(pl.col("changed") & (pl.col("status") == REJECTED)).select(reject_cols).lazy()])
    return events, rejects, outcomes


def ingest_fhir_local(
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
    anonymous_subjects: bool = False,
    fhir_version: str = "auto",
    dataset_version: str | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """:func:`ehrfm.ingest.fhir.spark_ingest.ingest_fhir` on this machine (same arguments, same output; see
    the module doc); ``workers``: processes (default: the CPUs this process may use). Returns the summary
    written to ``output/summary.json``."""
    import polars as pl

    from ehrfm.ingest.fhir.process import Summary
    from ehrfm.ingest.fhir.spark_ingest import SPLIT_BYTES, apply_scan, plan_units
    from ehrfm.ingest.fhir.spark_rows import arrow_schema, to_batch
    from ehrfm.ingest.fhir.spark_units import SCAN_SCHEMA
    from ehrfm.ingest.local_writer import write_meds_local

    if validate not in VALIDATE_CHOICES:
        raise ValueError(f"validate must be one of {VALIDATE_CHOICES}, got {validate!r}")
    fhir_version = check_version(fhir_version)
    found = expand_local_inputs(inputs)
    limit = max_time_us if max_time_us is not None else now_us() + US_PER_DAY
    workers = workers or len(os.sched_getaffinity(0))
    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        seconds[name] = round(max(0.0, time.perf_counter() - clock - sum(seconds.values())), 1)

    # ranges small enough for every worker to get several units (a big file would otherwise be one long
    # task at the end); where a range starts never changes the output (line numbers are counted by the scan)
    total = sum(size for _, size in found.files)
    split = min(SPLIT_BYTES, max(1 << 20, total // (4 * workers)))
    units: list[dict[str, Any]] = [dict(zip(("path", "start", "end", "mode"), u, strict=True))
                                   for u in plan_units(found.files, split)]
    tmp = tempfile.mkdtemp(prefix="ehrfm-fhir-local-")
    # spawn, not fork: the parent may hold polars' and pyarrow's thread pools
    ctx = get_context("spawn")
    try:
        # one pool for every step (a worker process starts once: imports, rules, validator models)
        with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
            scan_rows = [r for rows in pool.map(_scan_task, units) for r in rows]
            scan = pa.Table.from_batches([to_batch(scan_rows, arrow_schema(SCAN_SCHEMA))])
            births, med_rows, meds, complete = apply_scan(scan, units)
            lookups = os.path.join(tmp, "lookups.pickle")
            with open(lookups, "wb") as fh:
                pickle.dump((births, meds), fh, protocol=pickle.HIGHEST_PROTOCOL)
            lap("scan")

            args = (validate, limit, sample_every, fhir_version)
            # biggest units first, so that the last ones to finish are small
            order = sorted(range(len(units)), key=lambda i: units[i]["start"] - units[i]["end"])
            outs = {i: os.path.join(tmp, f"pass1-{i}.parquet") for i in order}
            futures = [pool.submit(_map_task, units[i], outs[i], lookups, complete, *args) for i in order]
            for fut in futures:
                fut.result()
            # read lazily, a kind at a time: the rows of a big input are not held in memory all at once
            p1 = pl.scan_parquet([outs[i] for i in sorted(outs)])
            lap("map")
            rows = p1.filter(pl.col("kind").is_in(["E", "R", "K", "D", "V"]))
            if not complete and p1.filter(pl.col("kind") == "P").select(pl.len()).collect().item():
                rows = pl.concat([rows, _cross_file(pool, p1, births, med_rows, tmp, workers, args)])
            lap("cross_file")

        events, rejects, outcomes = settle_local(rows, anonymous_subjects)
        lap("settle")
        counts = Summary()
        for r in (outcomes.group_by("resource_type", "status")
                  .agg(pl.len().alias("n"), pl.col("n_events").sum().alias("ev")).iter_rows(named=True)):
            counts.merge_row(r["resource_type"], {"in": r["n"], r["status"]: r["n"], "events": r["ev"]})
        v = rows.filter(pl.col("kind") == "V").collect()
        invalid = v.filter(pl.col("status") == "invalid")
        summary: dict[str, Any] = {
            **counts.to_dict(),
            "validation_sample": {"checked": v.height, "invalid": invalid.height,
                                  "examples": [f"{r['source_file']}#{r['record_index']}: {r['reason']}"
                                               for r in invalid.head(5).iter_rows(named=True)]}}
        summary.update({"inputs": list(inputs), "files": len(found.files), "validate": validate,
                        "max_time_us": limit, "skipped_links": found.skipped_links,
                        "anonymous_subjects": anonymous_subjects, "fhir_version": fhir_version})
        subject_ids = (p1.filter(pl.col("kind") == "I")
                       .select("subject_id", pl.col("patient_ref").alias("source_id")).unique().collect())
        summary["subject_id_collisions"] = int(
            subject_ids.group_by("subject_id").len().filter(pl.col("len") > 1).height)
        lap("summary")
        summary["seconds"] = dict(seconds)
        descriptions = (rows.filter(pl.col("kind") == "D")
                        .select("code", pl.col("text_value").alias("description")).collect().to_arrow())
        ev = events.select("subject_id", pl.col("time").cast(pl.Datetime("us")), "code", "numeric_value",
                           "text_value", "encounter_id", "unit", "source")
        del outcomes
        result = write_meds_local(ev, output, dataset_name=dataset_name, etl_name=etl_name,
                                  code_descriptions=descriptions, rejects=rejects, subject_ids=subject_ids,
                                  summary=summary, split_ratios=split_ratios, split_seed=split_seed,
                                  rows_per_shard=rows_per_shard, dataset_version=dataset_version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["seconds"] = {**seconds, "write": round(time.perf_counter() - clock - sum(seconds.values()), 1)}
    return result
