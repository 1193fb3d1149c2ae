"""``ehrfm tokenize``: MEDS events + label tables → token-stream parquet (pretraining and task rows).

Reads ``<output>/vocab.json`` and ``<output>/bins.json`` written by ``ehrfm prepare`` (or ``--vocab`` /
``--bins``), writes ``<output>/pretrain/*.parquet``, ``<output>/tasks/<task>/*.parquet`` (TOKENS_SCHEMA),
``<output>/tokenize.json`` (config + summary) and prints the summary table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import yaml
from tqdm import tqdm

from ehrfm.prepare.bins import Bins, load_bins
from ehrfm.schema import CODE, ENCOUNTER_ID, NUMERIC_VALUE, SUBJECT_ID, TIME, task_token
from ehrfm.config.tokenize import TokenizerConfig
from ehrfm.tokenize.direct import iter_rows, read_label_tables, rows_to_table, summarize, write_local
from ehrfm.vocab import Vocabulary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ehrfm tokenize``."""
    parser.add_argument("--meds", required=True, help="ingested MEDS dataset (data/, metadata/subject_splits.parquet)")
    parser.add_argument("--labels", default=None, help="folder of <task>.parquet label tables (omit: pretraining rows only)")
    parser.add_argument("--output", required=True, help="tokens folder (holds vocab.json/bins.json from `ehrfm prepare`)")
    parser.add_argument("--tasks", default="all", help="'all' label tables in --labels, or comma-separated task names")
    parser.add_argument("--max-len", type=int, default=None, help="max tokens per row (default 2048, or the config's)")
    parser.add_argument("--config", default=None, help="YAML with TokenizerConfig fields (max_len, visit_gap_hours, ...)")
    parser.add_argument("--vocab", default=None, help="vocab.json (default: <output>/vocab.json)")
    parser.add_argument("--bins", default=None, help="bins.json (default: <output>/bins.json)")
    parser.add_argument("--no-pretrain", action="store_true", help="write task rows only")
    parser.add_argument("--engine", choices=("spark", "local"), default="spark", help="Spark (default) or one local process")


def load_config(path: str | None, max_len: int | None) -> TokenizerConfig:
    """TokenizerConfig from an optional YAML file, ``--max-len`` taking precedence."""
    data: dict[str, object] = {}
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: tokenizer config must be a YAML mapping")
    if max_len is not None:
        data["max_len"] = max_len
    return TokenizerConfig.from_dict(data)


def resolve_label_tasks(labels: str | None, spec: str, vocab: Vocabulary) -> list[str]:
    """Tasks to tokenize: label tables present in ``labels`` (``all``) or the named ones; each must
    have a prompt token in the vocabulary."""
    if labels is None:
        return []
    folder = Path(labels)
    if not folder.is_dir():
        raise FileNotFoundError(f"--labels {folder}: not a folder")
    present = sorted(p.name[: -len(".parquet")] for p in folder.glob("*.parquet"))
    tasks = present if spec.strip() == "all" else [t.strip() for t in spec.split(",") if t.strip()]
    for t in tasks:
        if t not in present:
            raise FileNotFoundError(f"task {t!r}: no label table {folder / (t + '.parquet')} (present: {present})")
        if task_token(t) not in vocab:
            raise ValueError(f"task {t!r}: no prompt token {task_token(t)} in the vocabulary; rerun `ehrfm prepare --tasks`")
    return tasks


def _run_spark(args: argparse.Namespace, vocab: Vocabulary, bins: Bins, cfg: TokenizerConfig, tasks: list[str]) -> pd.DataFrame:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark import StorageLevel

    from ehrfm.spark import get_spark
    from ehrfm.tokenize.spark_job import read_events_spark, read_labels_spark, tokenize_spark, write_tokens

    spark = get_spark("ehrfm-tokenize")
    meds = Path(args.meds)
    events = read_events_spark(spark, meds)
    labels = read_labels_spark(spark, args.labels, tasks) if tasks else None
    splits_path = meds / "metadata" / "subject_splits.parquet"
    splits = spark.read.parquet(str(splits_path)) if splits_path.exists() else None
    rows = tokenize_spark(events, labels, splits, vocab, bins, cfg, pretrain=not args.no_pretrain)
    rows = rows.persist(StorageLevel.MEMORY_AND_DISK)  # written once per target; tokenize only once
    try:
        for path in tqdm(write_tokens(rows, args.output, tasks), total=len(tasks) + 1, desc="write", unit="table"):
            tqdm.write(f"wrote {path}")
        return rows.select("task", "split", "length", "label", "event").toPandas()
    finally:
        rows.unpersist()


def _run_local(args: argparse.Namespace, vocab: Vocabulary, bins: Bins, cfg: TokenizerConfig, tasks: list[str]) -> pd.DataFrame:
    meds = Path(args.meds)
    table = pq.read_table(meds / "data")
    cols = [c for c in (SUBJECT_ID, TIME, CODE, NUMERIC_VALUE, ENCOUNTER_ID) if c in table.column_names]
    events = table.select(cols).to_pandas()
    labels = read_label_tables(args.labels, tasks) if tasks else None
    splits_path = meds / "metadata" / "subject_splits.parquet"
    splits = None
    if splits_path.exists():
        sp = pq.read_table(splits_path).to_pandas()
        splits = dict(zip(sp[SUBJECT_ID].astype(int), sp["split"].astype(str), strict=True))
    rows = list(iter_rows(events, labels, splits, vocab, bins, cfg, pretrain=not args.no_pretrain, progress=True))
    out = rows_to_table(rows)
    for path in write_local(out, args.output, tasks):
        print(f"wrote {path}")
    return out.select(["task", "split", "length", "label", "event"]).to_pandas()


def run(args: argparse.Namespace) -> int:
    """Tokenize, write the parquet folders and tokenize.json, print the summary."""
    out = Path(args.output)
    vocab = Vocabulary.load(args.vocab or out / "vocab.json")
    bins = load_bins(args.bins or out / "bins.json")
    cfg = load_config(args.config, args.max_len)
    if not (Path(args.meds) / "data").is_dir():
        raise FileNotFoundError(f"--meds {args.meds}: no data/ folder (expected an ingested MEDS dataset)")
    tasks = resolve_label_tasks(args.labels, args.tasks, vocab)
    t0 = time.time()
    frame = (_run_spark if args.engine == "spark" else _run_local)(args, vocab, bins, cfg, tasks)
    summary = summarize(frame)
    seconds = round(time.time() - t0, 2)
    (out / "tokenize.json").write_text(
        json.dumps({"config": cfg.to_dict(), "tasks": tasks, "seconds": seconds,
                    "summary": json.loads(summary.to_json(orient="records"))}, indent=1)
    )
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"{len(frame)} rows in {seconds} s → {out}")
    return 0
