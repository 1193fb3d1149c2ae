"""``ehrfm ingest meds`` stage: ``run(MedsIngestConfig, Layout) -> IngestSummary``."""

from __future__ import annotations

import time

from ehrfm.atomic import folder_outputs
from ehrfm.config.base import ConfigError
from ehrfm.config.ingest import IngestSummary, MedsIngestConfig
from ehrfm.layout import MEDS_SUMMARY, Layout


def run(cfg: MedsIngestConfig, layout: Layout) -> IngestSummary:
    """Re-write the MEDS(-like) parquet ``cfg.input`` with Spark as the MEDS dataset ``layout.meds``."""
    if not cfg.input:
        raise ConfigError("input=None: a MEDS root, a folder of parquet files or a parquet file is required"
                          " (--input)")
    from ehrfm.ingest.meds_input import ingest_meds
    from ehrfm.ingest.summary import make_summary, meds_counts, print_summary
    from ehrfm.spark import get_spark

    spark = get_spark("ehrfm-ingest-meds", master=cfg.spark.master, conf=cfg.spark.conf)
    out = layout.meds_uri
    t0 = time.perf_counter()
    # staged: the input may even be the output folder itself (read whole before the rename replaces it)
    with folder_outputs(out, MEDS_SUMMARY, overwrite=cfg.overwrite, key="meds") as staged:
        result = ingest_meds(spark, cfg.input, staged.path(), subject_col=cfg.subject_col,
                             time_col=cfg.time_col, code_col=cfg.code_col, numeric_col=cfg.numeric_col,
                             text_col=cfg.text_col, split_ratios=cfg.split_ratios, split_seed=cfg.split_seed,
                             rows_per_shard=cfg.rows_per_shard, dataset_name=cfg.dataset_name,
                             dataset_version=cfg.dataset_version)
        staged.publish()
    summary = make_summary("meds", result, meds_counts(result), out, time.perf_counter() - t0)
    print_summary(summary)
    return summary
