"""``ehrfm ingest mimic`` stage: ``run(MimicIngestConfig, Layout) -> IngestSummary``."""

from __future__ import annotations

import sys
import time
from typing import Any

from ehrfm.atomic import folder_outputs
from ehrfm.config.base import ConfigError
from ehrfm.config.ingest import IngestSummary, MimicIngestConfig
from ehrfm.config.spark import resolve_engine
from ehrfm.layout import MEDS_SUMMARY, Layout


def run(cfg: MimicIngestConfig, layout: Layout) -> IngestSummary:
    """Ingest the MIMIC-IV root ``cfg.input`` into ``layout.meds`` with the engine of ``cfg.engine`` (Spark,
    or polars on this machine with no JVM: :func:`ehrfm.config.spark.resolve_engine`); prints the per-rule
    table."""
    if not cfg.input:
        raise ConfigError("input=None: the MIMIC-IV root holding hosp/ and icu/ is required (--input)")
    from ehrfm.ingest.mimic.rules import load_rules
    from ehrfm.ingest.summary import make_summary, mimic_counts, print_summary

    rules = load_rules(cfg.rules) if cfg.rules else None
    out = layout.meds_uri
    engine = resolve_engine(cfg.engine, cfg.spark.master, [cfg.input, out])
    spark = None
    if engine != "local":  # first: the output's filesystem is then Spark's Hadoop FileSystem (ehrfm.storage)
        from ehrfm.spark import get_spark

        spark = get_spark("ehrfm-ingest-mimic", master=cfg.spark.master, conf=cfg.spark.conf)
    named: dict[str, Any] = {"dataset_name": cfg.dataset_name} if cfg.dataset_name else {}
    t0 = time.perf_counter()
    with folder_outputs(out, MEDS_SUMMARY, overwrite=cfg.overwrite, key="meds") as staged:
        common: dict[str, Any] = dict(rules=rules, split_ratios=cfg.split_ratios, split_seed=cfg.split_seed,
                                      rows_per_shard=cfg.rows_per_shard, dataset_version=cfg.dataset_version,
                                      **named)
        if engine == "local":
            from ehrfm.ingest.mimic.local import ingest_mimic_local

            result = ingest_mimic_local(cfg.input, staged.path(), **common)
        else:
            from ehrfm.ingest.mimic.ingest import ingest_mimic

            assert spark is not None
            result = ingest_mimic(spark, cfg.input, staged.path(), **common)
        staged.publish()
    summary = make_summary("mimic", result, mimic_counts(result), out, time.perf_counter() - t0)
    print_summary(summary)
    if not summary.reconciled:
        bad = [k for k, r in summary.by_type.items() if r["in"] != r["mapped"] + r["rejected"] + r["skipped"]]
        print(f"warning: rows of {bad} are not all accounted for (see {out}/summary.json)", file=sys.stderr)
    return summary
