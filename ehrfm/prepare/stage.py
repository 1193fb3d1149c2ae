"""``ehrfm prepare`` stage: ``run(PrepareConfig, Layout) -> PrepareSummary``.

Fits the code vocabulary (:class:`ehrfm.vocab.Vocabulary`) and the numeric-value bins
(:func:`ehrfm.prepare.bins.load_bins`) on the TRAIN split of ``layout.meds`` and writes ``vocab.json``,
``bins.json`` and ``prepare.json`` (config and summary) into ``layout.tokens``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ehrfm.atomic import Outputs, check_meds
from ehrfm.config.base import ConfigError
from ehrfm.config.prepare import PrepareConfig, PrepareSummary
from ehrfm.config.spark import SparkConfig
from ehrfm.layout import Layout, MedsPaths

if TYPE_CHECKING:
    from ehrfm.prepare.bins import Bins
    from ehrfm.vocab import Vocabulary


def resolve_tasks(cfg: PrepareConfig) -> list[str]:
    """Task names that get a prompt token: none (``task_tokens`` false), the named ones (sorted, unique) or,
    when ``tasks`` is empty, every task specification in ``tasks_dir`` (default: the packaged ones)."""
    if not cfg.task_tokens:
        return []
    if cfg.tasks:
        return sorted({t.strip() for t in cfg.tasks})
    from ehrfm import resources
    from ehrfm.prepare.vocab import task_names_from_dir

    folder = Path(cfg.tasks_dir) if cfg.tasks_dir else resources.tasks_dir()
    if not folder.is_dir():
        raise FileNotFoundError(f"tasks_dir={str(folder)!r}: not a folder of task YAML files")
    names = task_names_from_dir(folder)
    if not names:
        raise ConfigError(f"tasks_dir={str(folder)!r}: no task YAML files "
                          "(name the tasks, or set task_tokens false)")
    return names


def _splits_path(meds: MedsPaths) -> Path:
    path = meds.subject_splits
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (run `ehrfm ingest`, which writes the subject splits)")
    return path


def fit_local(meds: MedsPaths, min_count: int, n_bins: int,
              tasks: list[str]) -> tuple[Vocabulary, Bins, dict[str, int]]:
    """Fit vocabulary and bins in one process (small datasets, tests, the demo)."""
    import pyarrow.parquet as pq

    from ehrfm.prepare.bins import fit_bins_pandas
    from ehrfm.prepare.vocab import build_vocab, count_codes_pandas
    from ehrfm.schema import CODE, NUMERIC_VALUE, SUBJECT_ID, TRAIN_SPLIT

    splits = pq.read_table(_splits_path(meds), columns=[SUBJECT_ID, "split"]).to_pandas()
    events = meds.read_table([SUBJECT_ID, CODE, NUMERIC_VALUE]).to_pandas()
    counts = count_codes_pandas(events, splits)
    bins = fit_bins_pandas(events, splits, n_bins=n_bins, min_count=min_count)
    n_train = int((splits["split"] == TRAIN_SPLIT).sum())
    return build_vocab(counts, min_count=min_count, n_bins=n_bins, tasks=tasks), bins, _stats(counts, n_train)


def fit_spark(meds: MedsPaths, min_count: int, n_bins: int, tasks: list[str],
              spark_cfg: SparkConfig | None = None) -> tuple[Vocabulary, Bins, dict[str, int]]:
    """Fit vocabulary and bins with Spark (only per-code aggregates reach the driver)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import functions as F

    from ehrfm.prepare.bins import fit_bins_spark
    from ehrfm.prepare.vocab import build_vocab, count_codes_spark
    from ehrfm.schema import CODE, NUMERIC_VALUE, SUBJECT_ID, TRAIN_SPLIT
    from ehrfm.spark import get_spark

    sc = spark_cfg or SparkConfig()
    spark = get_spark("ehrfm-prepare", master=sc.master, conf=sc.conf)
    splits = spark.read.parquet(str(_splits_path(meds))).select(SUBJECT_ID, "split")
    events = meds.read_spark(spark).select(SUBJECT_ID, CODE, NUMERIC_VALUE)
    counts = count_codes_spark(events, splits)
    bins = fit_bins_spark(events, splits, n_bins=n_bins, min_count=min_count)
    n_train = splits.where(F.col("split") == TRAIN_SPLIT).count()
    return build_vocab(counts, min_count=min_count, n_bins=n_bins, tasks=tasks), bins, _stats(counts, n_train)


def _stats(counts: dict[str, int], n_train: int) -> dict[str, int]:
    return {"train_subjects": int(n_train), "train_events": int(sum(counts.values())),
            "codes_seen_on_train": len(counts)}


def run(cfg: PrepareConfig, layout: Layout) -> PrepareSummary:
    """Fit on the train split of ``layout.meds``; write ``vocab.json``, ``bins.json`` and ``prepare.json``
    into ``layout.tokens``; print and return the summary."""
    from ehrfm.schema import CODE, NUMERIC_VALUE, SUBJECT_ID

    meds = layout.meds_paths
    check_meds(meds.root, (SUBJECT_ID, CODE, NUMERIC_VALUE))
    tasks = resolve_tasks(cfg)
    out = layout.token_paths
    out.root.mkdir(parents=True, exist_ok=True)
    # opened before the fit, so a partial tokens folder is refused before the work, not after
    with Outputs(out.root, [out.vocab.name, out.bins.name], out.prepare_json.name, overwrite=cfg.overwrite,
                 key="tokens") as staged:
        t0 = time.time()
        if cfg.engine == "spark":
            vocab, bins, stats = fit_spark(meds, cfg.min_count, cfg.n_bins, tasks, cfg.spark)
        else:
            vocab, bins, stats = fit_local(meds, cfg.min_count, cfg.n_bins, tasks)
        vocab.save(staged.path(out.vocab.name))
        bins.save(staged.path(out.bins.name))
        summary = PrepareSummary(tasks=tasks, codes_kept=len(vocab.counts), vocab_size=len(vocab),
                                 codes_with_bins=len(bins.edges), seconds=round(time.time() - t0, 2), **stats)
        staged.publish(json.dumps({"config": cfg.to_dict(), "summary": summary.to_dict()}, indent=1))
    _print(cfg, summary)
    print(f"wrote {out.vocab} and {out.bins}")
    return summary


def _print(cfg: PrepareConfig, summary: PrepareSummary) -> None:
    rows: dict[str, Any] = {"min_count": cfg.min_count, "n_bins": cfg.n_bins, **summary.to_dict()}
    rows["tasks"] = ", ".join(summary.tasks) or "(none)"
    width = max(len(k) for k in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows.items()))
