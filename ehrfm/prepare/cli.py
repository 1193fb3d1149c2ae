"""``ehrfm prepare``: code vocabulary and numeric-value bins fitted on the TRAIN split of a MEDS dataset.

Writes ``<output>/vocab.json`` (:class:`ehrfm.vocab.Vocabulary`), ``<output>/bins.json``
(:func:`ehrfm.prepare.bins.load_bins`) and ``<output>/prepare.json`` (settings and counts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from ehrfm.prepare.bins import Bins, fit_bins_pandas, fit_bins_spark
from ehrfm.prepare.vocab import build_vocab, count_codes_pandas, count_codes_spark, task_names_from_dir
from ehrfm.schema import CODE, NUMERIC_VALUE, SUBJECT_ID, TRAIN_SPLIT
from ehrfm.vocab import Vocabulary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ehrfm prepare``."""
    parser.add_argument("--meds", required=True, help="ingested MEDS dataset (data/, metadata/subject_splits.parquet)")
    parser.add_argument("--output", required=True, help="tokens folder: vocab.json and bins.json are written here")
    parser.add_argument("--min-count", type=int, default=5, help="min train events for a code to get a token (else [UNK]); also the min train values for a code to get bins")
    parser.add_argument("--n-bins", type=int, default=20,
                        help="quantile bins per numeric code (20: with 10, the top bin of creatinine starts at ~2.0 "
                             "mg/dL and hides the trends of the sickest stays; see bench/README.md)")
    parser.add_argument(
        "--tasks",
        default="all",
        help="task prompt tokens: 'all' (every tasks/*.yaml), comma-separated names, a folder of task YAML, or 'none'",
    )
    parser.add_argument("--tasks-dir", default=None, help="folder of task YAML for --tasks all (default: the repo's tasks/)")
    parser.add_argument("--engine", choices=("spark", "local"), default="spark", help="Spark (default) or one local process")


def resolve_tasks(spec: str, tasks_dir: str | None) -> list[str]:
    """Task names from ``--tasks``: ``all``, ``none``, a folder of YAML, or comma-separated names."""
    spec = spec.strip()
    if spec == "none" or not spec:
        return []
    if spec == "all":
        from ehrfm.labels.parse import DEFAULT_TASKS_DIR

        folder = Path(tasks_dir) if tasks_dir else DEFAULT_TASKS_DIR
        if not folder.is_dir():
            raise FileNotFoundError(f"--tasks all: no task folder {folder}")
        return task_names_from_dir(folder)
    if Path(spec).is_dir():
        return task_names_from_dir(spec)
    return sorted({n.strip() for n in spec.split(",") if n.strip()})


def _splits_path(meds: Path) -> Path:
    path = meds / "metadata" / "subject_splits.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (run `ehrfm ingest`, which writes the subject splits)")
    return path


def fit_local(meds: Path, min_count: int, n_bins: int, tasks: list[str]) -> tuple[Vocabulary, Bins, dict[str, Any]]:
    """Fit vocabulary and bins in one process (small datasets, tests, the demo)."""
    splits = pq.read_table(_splits_path(meds), columns=[SUBJECT_ID, "split"]).to_pandas()
    events = pq.read_table(meds / "data", columns=[SUBJECT_ID, CODE, NUMERIC_VALUE]).to_pandas()
    counts = count_codes_pandas(events, splits)
    bins = fit_bins_pandas(events, splits, n_bins=n_bins, min_count=min_count)
    n_train = int((splits["split"] == TRAIN_SPLIT).sum())
    return build_vocab(counts, min_count=min_count, n_bins=n_bins, tasks=tasks), bins, _stats(counts, n_train)


def fit_spark(meds: Path, min_count: int, n_bins: int, tasks: list[str]) -> tuple[Vocabulary, Bins, dict[str, Any]]:
    """Fit vocabulary and bins with Spark (only per-code aggregates reach the driver)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import functions as F

    from ehrfm.spark import get_spark

    spark = get_spark("ehrfm-prepare")
    splits = spark.read.parquet(str(_splits_path(meds))).select(SUBJECT_ID, "split")
    events = spark.read.parquet(str(meds / "data")).select(SUBJECT_ID, CODE, NUMERIC_VALUE)
    counts = count_codes_spark(events, splits)
    bins = fit_bins_spark(events, splits, n_bins=n_bins, min_count=min_count)
    n_train = splits.where(F.col("split") == TRAIN_SPLIT).count()
    return build_vocab(counts, min_count=min_count, n_bins=n_bins, tasks=tasks), bins, _stats(counts, n_train)


def _stats(counts: dict[str, int], n_train: int) -> dict[str, Any]:
    return {"train_subjects": n_train, "train_events": int(sum(counts.values())), "codes_seen_on_train": len(counts)}


def run(args: argparse.Namespace) -> int:
    """Fit on train, write vocab.json / bins.json / prepare.json, print a summary."""
    meds, out = Path(args.meds), Path(args.output)
    if not (meds / "data").is_dir():
        raise FileNotFoundError(f"--meds {meds}: no data/ folder (expected an ingested MEDS dataset)")
    tasks = resolve_tasks(args.tasks, args.tasks_dir)
    t0 = time.time()
    fit = fit_spark if args.engine == "spark" else fit_local
    vocab, bins, stats = fit(meds, args.min_count, args.n_bins, tasks)
    out.mkdir(parents=True, exist_ok=True)
    vocab.save(out / "vocab.json")
    bins.save(out / "bins.json")
    kept = len(vocab.counts)  # codes at or above min_count on train
    summary = {
        **stats,
        "min_count": args.min_count,
        "n_bins": args.n_bins,
        "tasks": tasks,
        "codes_kept": kept,
        "vocab_size": len(vocab),
        "codes_with_bins": len(bins.edges),
        "seconds": round(time.time() - t0, 2),
    }
    (out / "prepare.json").write_text(json.dumps(summary, indent=1))
    print(pd.Series(summary, dtype=object).to_string())
    print(f"wrote {out / 'vocab.json'} and {out / 'bins.json'}")
    return 0
