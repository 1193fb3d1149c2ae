"""``ehrfm prepare`` stage: ``run(PrepareConfig, Layout) -> PrepareSummary``.

Fits the code vocabulary (:class:`ehrfm.vocab.Vocabulary`) and the numeric-value bins
(:func:`ehrfm.prepare.bins.load_bins`) on the TRAIN split of ``layout.meds`` and writes ``vocab.json``,
``bins.json`` and ``prepare.json`` (config and summary) into ``layout.tokens``. Both may be local folders
or Hadoop-compatible URIs (``hdfs://``, ``s3a://``, ``s3://`` ...): the Spark engine reads through Spark's
Hadoop FileSystem, the local engine through pyarrow's filesystems (:mod:`ehrfm.storage`).
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
from ehrfm.layout import (
    MEDS_SUBJECT_SPLITS,
    TOKENS_BINS,
    TOKENS_PREPARE,
    TOKENS_VOCAB,
    Layout,
    MedsPaths,
)

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


def _splits_uri(meds: str) -> str:
    """``metadata/subject_splits.parquet`` of the MEDS folder ``meds`` (local path or URI); refused when
    absent."""
    from ehrfm import storage

    path = storage.join(meds, MEDS_SUBJECT_SPLITS)
    if not storage.is_file(path):
        raise FileNotFoundError(f"{path}: missing (run `ehrfm ingest`, which writes the subject splits)")
    return path


def fit_local(meds: str | MedsPaths, min_count: int, n_bins: int,
              tasks: list[str]) -> tuple[Vocabulary, Bins, dict[str, int]]:
    """Fit vocabulary and bins in one process (small datasets, tests, the demo); ``meds``: the MEDS folder
    (local path or URI: pyarrow's filesystems)."""
    import pyarrow.parquet as pq

    from ehrfm import storage
    from ehrfm.meds_files import read_meds_table
    from ehrfm.prepare.bins import fit_bins_pandas
    from ehrfm.prepare.vocab import build_vocab, count_codes_pandas
    from ehrfm.schema import CODE, NUMERIC_VALUE, SUBJECT_ID, TRAIN_SPLIT

    root = _root(meds)
    fs, path = storage.filesystem(_splits_uri(root))
    splits = pq.read_table(path, columns=[SUBJECT_ID, "split"], filesystem=fs).to_pandas()
    events = read_meds_table(root, [SUBJECT_ID, CODE, NUMERIC_VALUE]).to_pandas()
    counts = count_codes_pandas(events, splits)
    bins = fit_bins_pandas(events, splits, n_bins=n_bins, min_count=min_count)
    n_train = int((splits["split"] == TRAIN_SPLIT).sum())
    return build_vocab(counts, min_count=min_count, n_bins=n_bins, tasks=tasks), bins, _stats(counts, n_train)


def fit_spark(meds: str | MedsPaths, min_count: int, n_bins: int, tasks: list[str],
              spark_cfg: SparkConfig | None = None,
              accuracy: int | None = None) -> tuple[Vocabulary, Bins, dict[str, int]]:
    """Fit vocabulary and bins with Spark (only per-code aggregates reach the driver); ``meds``: the MEDS
    folder (local path or any URI the cluster's Hadoop serves); ``accuracy``: of the bins'
    ``percentile_approx`` (:func:`ehrfm.prepare.bins.fit_bins_spark`)."""
    from pyspark.sql import functions as F

    from ehrfm import storage
    from ehrfm.meds_files import read_meds_spark
    from ehrfm.prepare.bins import DEFAULT_ACCURACY, fit_bins_spark
    from ehrfm.prepare.vocab import build_vocab, count_codes_spark
    from ehrfm.schema import CODE, NUMERIC_VALUE, SUBJECT_ID, TRAIN_SPLIT

    spark = _spark(spark_cfg)
    root = _root(meds)
    splits = spark.read.parquet(storage.spark_uri(_splits_uri(root))).select(SUBJECT_ID, "split")
    events = read_meds_spark(spark, root).select(SUBJECT_ID, CODE, NUMERIC_VALUE)
    counts = count_codes_spark(events, splits)
    bins = fit_bins_spark(events, splits, n_bins=n_bins, min_count=min_count,
                          accuracy=DEFAULT_ACCURACY if accuracy is None else accuracy)
    n_train = splits.where(F.col("split") == TRAIN_SPLIT).count()
    return build_vocab(counts, min_count=min_count, n_bins=n_bins, tasks=tasks), bins, _stats(counts, n_train)


def _root(meds: str | MedsPaths) -> str:
    from ehrfm import storage

    return storage.normalize(str(meds.root if isinstance(meds, MedsPaths) else meds))


def _spark(spark_cfg: SparkConfig | None) -> Any:
    """The Spark session of the stage (started before any URI is touched: a scheme only Hadoop serves is
    read through its JVM)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from ehrfm.spark import get_spark

    sc = spark_cfg or SparkConfig()
    return get_spark("ehrfm-prepare", master=sc.master, conf=sc.conf)


def _stats(counts: dict[str, int], n_train: int) -> dict[str, int]:
    return {"train_subjects": int(n_train), "train_events": int(sum(counts.values())),
            "codes_seen_on_train": len(counts)}


def run(cfg: PrepareConfig, layout: Layout) -> PrepareSummary:
    """Fit on the train split of ``layout.meds``; write ``vocab.json``, ``bins.json`` and ``prepare.json``
    into ``layout.tokens``; print and return the summary.

    Both folders may be local paths or URIs (``layout.meds_uri`` / ``layout.tokens_uri``): a local tokens
    folder is staged and published atomically (:class:`ehrfm.atomic.Outputs`), a remote one written in
    place with ``prepare.json`` last."""
    from ehrfm import storage
    from ehrfm.config.spark import resolve_engine
    from ehrfm.schema import CODE, NUMERIC_VALUE, SUBJECT_ID

    meds, tokens = layout.meds_uri, layout.tokens_uri
    # resolved once, and recorded so in prepare.json
    cfg = cfg.replace(engine=resolve_engine(cfg.engine, cfg.spark.master, [meds, tokens]))
    if cfg.engine == "spark":
        _spark(cfg.spark)
    check_meds(meds, (SUBJECT_ID, CODE, NUMERIC_VALUE))
    tasks = resolve_tasks(cfg)
    if not storage.is_remote(tokens):
        Path(tokens).mkdir(parents=True, exist_ok=True)
    # opened before the fit, so a partial tokens folder is refused before the work, not after
    with Outputs(tokens, [TOKENS_VOCAB, TOKENS_BINS], TOKENS_PREPARE, overwrite=cfg.overwrite,
                 key="tokens") as staged:
        t0 = time.time()
        if cfg.engine == "spark":
            vocab, bins, stats = fit_spark(meds, cfg.min_count, cfg.n_bins, tasks, cfg.spark,
                                           cfg.percentile_accuracy)
        else:
            vocab, bins, stats = fit_local(meds, cfg.min_count, cfg.n_bins, tasks)
        vocab.save(staged.path(TOKENS_VOCAB))
        bins.save(staged.path(TOKENS_BINS))
        summary = PrepareSummary(tasks=tasks, codes_kept=len(vocab.counts), vocab_size=len(vocab),
                                 codes_with_bins=len(bins.edges), seconds=round(time.time() - t0, 2), **stats)
        staged.publish(json.dumps({"config": cfg.to_dict(), "summary": summary.to_dict()}, indent=1))
    _print(cfg, summary)
    print(f"wrote {storage.join(tokens, TOKENS_VOCAB)} and {storage.join(tokens, TOKENS_BINS)}")
    return summary


def _print(cfg: PrepareConfig, summary: PrepareSummary) -> None:
    rows: dict[str, Any] = {"min_count": cfg.min_count, "n_bins": cfg.n_bins, **summary.to_dict()}
    rows["tasks"] = ", ".join(summary.tasks) or "(none)"
    width = max(len(k) for k in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows.items()))
