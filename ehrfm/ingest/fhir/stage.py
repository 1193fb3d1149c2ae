"""``ehrfm ingest fhir`` stage: ``run(FhirIngestConfig, Layout) -> IngestSummary``."""

from __future__ import annotations

import time
from typing import Any

from ehrfm.atomic import folder_outputs
from ehrfm.config.base import ConfigError
from ehrfm.config.ingest import FhirIngestConfig, IngestSummary
from ehrfm.layout import MEDS_SUMMARY, Layout


def stamp_dataset_version(meds: str, version: str) -> None:
    """Set ``dataset_version`` in ``<meds>/metadata/dataset.json`` (FHIR carries no release of its own, so
    only the user's ``--dataset_version`` names one; done here, before the staged folder is published,
    because :func:`ehrfm.ingest.fhir.spark_ingest.ingest_fhir` has no parameter for it yet). ``meds`` is a
    local path or any URI :mod:`ehrfm.storage` serves (Hadoop's FileSystem when a Spark session runs)."""
    import json

    from ehrfm import storage
    from ehrfm.layout import MEDS_DATASET_JSON

    uri = storage.join(meds, MEDS_DATASET_JSON)
    meta = storage.read_json(uri)
    meta["dataset_version"] = version
    storage.write_text(uri, json.dumps(meta, indent=2))


def resolve_engine(cfg: FhirIngestConfig, output: str | None = None) -> str:
    """``local`` or ``spark`` for ``cfg.engine`` (:func:`ehrfm.config.spark.resolve_engine` over the inputs
    and the output folder: ``auto`` goes to Spark for a cluster master, spark-submit or a non-``file:``
    URI)."""
    from ehrfm.config.spark import resolve_engine as resolve

    return resolve(cfg.engine, cfg.spark.master, [*cfg.input, *([output] if output else [])])


def run(cfg: FhirIngestConfig, layout: Layout) -> IngestSummary:
    """Ingest ``cfg.input`` (default: the layout's synthetic population) into ``layout.meds`` with the engine
    of ``cfg.engine`` (Spark, or a process pool on this machine: :func:`resolve_engine`).

    Prints the per-resource-type table and returns the summary; raises ``RuntimeError`` (after writing
    the dataset) when the counts of a resource type do not reconcile (in = mapped + rejected + skipped +
    duplicate).
    """
    from ehrfm.ingest.fhir.times import TimeParseError, parse_fhir_time

    max_time_us = None
    if cfg.max_time is not None:
        try:
            max_time_us = parse_fhir_time(cfg.max_time)
        except TimeParseError as e:
            raise ConfigError(f"max_time={cfg.max_time!r}: {e}") from None
    inputs = list(cfg.input)
    if not inputs:
        if not layout.synthetic_dir.is_dir():
            raise FileNotFoundError(f"input=[]: no FHIR input given and no synthetic population at "
                                    f"{layout.synthetic_dir} (run `ehrfm synth` first, or set --input)")
        inputs = [str(layout.synthetic_dir)]
    from ehrfm.ingest.summary import fhir_counts, make_summary, print_summary

    out = layout.meds_uri
    engine = resolve_engine(cfg, out)
    spark = None
    if engine != "local":  # first: the output's filesystem is then Spark's Hadoop FileSystem (ehrfm.storage)
        from ehrfm.spark import get_spark

        spark = get_spark("ehrfm-ingest-fhir", master=cfg.spark.master, conf=cfg.spark.conf)
    named: dict[str, Any] = {"dataset_name": cfg.dataset_name} if cfg.dataset_name else {}
    common: dict[str, Any] = dict(
        validate=cfg.validate, sample_every=cfg.sample_every, max_time_us=max_time_us,
        split_ratios=cfg.split_ratios, split_seed=cfg.split_seed, rows_per_shard=cfg.rows_per_shard,
        anonymous_subjects=cfg.anonymous_subjects, fhir_version=cfg.fhir_version, **named)
    t0 = time.perf_counter()
    with folder_outputs(out, MEDS_SUMMARY, overwrite=cfg.overwrite, key="meds") as staged:
        if engine == "local":
            from ehrfm.ingest.fhir.local_ingest import ingest_fhir_local

            result = ingest_fhir_local(inputs, staged.path(), **common)
        else:
            from ehrfm.ingest.fhir.spark_ingest import ingest_fhir

            assert spark is not None
            result = ingest_fhir(spark, inputs, staged.path(), progress=True, **common)
        if cfg.dataset_version:
            stamp_dataset_version(staged.path(), cfg.dataset_version)
        staged.publish()
    summary = make_summary("fhir", result, fhir_counts(result), out, time.perf_counter() - t0)
    print_summary(summary)
    sample = result.get("validation_sample") or {}
    if sample.get("checked"):
        print(f"validation sample: {sample['invalid']:,} of {sample['checked']:,} mapped records invalid"
              + "".join(f"\n  {x}" for x in sample.get("examples", [])))
    if result.get("subject_id_collisions"):
        print(f"warning: {result['subject_id_collisions']} subject_id(s) shared by different Patient ids")
    if not summary.reconciled:
        raise RuntimeError(f"ehrfm ingest fhir: counts do not reconcile (in != mapped + rejected + skipped + "
                           f"duplicate); "
                           f"see {out}/summary.json")
    return summary
