"""``ehrfm tokenize`` stage: ``run(TokenizeConfig, Layout) -> TokenizeSummary``.

Reads the MEDS events of ``layout.meds``, the label tables of ``layout.labels`` and the ``vocab.json`` /
``bins.json`` that ``ehrfm prepare`` wrote into ``layout.tokens``; writes ``tokens/pretrain/`` (one row per
subject), ``tokens/tasks/<task>/`` (one row per label) and ``tokens/tokenize.json`` (the tokenizer config,
``max_len`` included, and the summary: :mod:`ehrfm.tokenize.meta`), and prints the summary table. Every
folder may be a local path or a Hadoop-compatible URI (``hdfs://``, ``s3a://``, ``s3://`` ...): the Spark
engine reads and writes through Spark's Hadoop FileSystem and aggregates the summary in Spark (no token row
reaches the driver), the local engine through pyarrow's filesystems.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from ehrfm.atomic import Outputs, check_meds
from ehrfm.config.base import ConfigError
from ehrfm.config.tokenize import TokenizeConfig, TokenizeSummary
from ehrfm.layout import (
    LABEL_SUFFIX,
    MEDS_SUBJECT_SPLITS,
    TOKENS_BINS,
    TOKENS_META,
    TOKENS_PRETRAIN,
    TOKENS_TASKS,
    TOKENS_VOCAB,
    Layout,
)

if TYPE_CHECKING:
    import pandas as pd

    from ehrfm.prepare.bins import Bins
    from ehrfm.vocab import Vocabulary


def resolve_tasks(cfg: TokenizeConfig, layout: Layout, vocab: Vocabulary) -> list[str]:
    """Tasks to write task rows for: none (``task_rows`` false), the named ones, or every label table in
    ``layout.labels`` (a local folder or URI); each needs a label table and a prompt token in the
    vocabulary."""
    if not cfg.task_rows:
        return []
    from ehrfm import storage
    from ehrfm.labels.tables import label_tasks
    from ehrfm.schema import task_token

    labels = layout.labels_uri
    if not storage.is_dir(labels):
        raise FileNotFoundError(f"labels={labels!r}: not a folder (run `ehrfm label`, or set task_rows "
                                "false for pretraining rows only)")
    present = label_tasks(labels)
    tasks = list(dict.fromkeys(t.strip() for t in cfg.tasks)) if cfg.tasks else present
    for t in tasks:
        if t not in present:
            raise FileNotFoundError(f"task {t!r}: no label table {storage.join(labels, t + LABEL_SUFFIX)} "
                                    f"(present: {present})")
        if task_token(t) not in vocab:
            raise ConfigError(f"tasks={tasks}: task {t!r} has no prompt token {task_token(t)} in the "
                              f"vocabulary {storage.join(layout.tokens_uri, TOKENS_VOCAB)}; rerun "
                              "`ehrfm prepare` with it in --tasks")
    return tasks


def _splits(meds: str) -> str | None:
    """``metadata/subject_splits.parquet`` of the MEDS folder ``meds``, None when absent."""
    from ehrfm import storage

    path = storage.join(meds, MEDS_SUBJECT_SPLITS)
    return path if storage.is_file(path) else None


def _spark(cfg: TokenizeConfig) -> Any:
    """The stage's Spark session (started before any URI is touched: a scheme only Hadoop serves is read
    through its JVM)."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from ehrfm.spark import get_spark

    return get_spark("ehrfm-tokenize", master=cfg.spark.master, conf=cfg.spark.conf)


def _run_spark(cfg: TokenizeConfig, layout: Layout, vocab: Vocabulary, bins: Bins,
               tasks: list[str], out: str) -> tuple[pd.DataFrame, int]:
    """Tokenize with Spark into ``out``; returns the summary table (:func:`summarize_spark`: a Spark
    aggregate, length percentiles approximate) and the number of rows. No token row reaches the driver."""
    from pyspark import StorageLevel
    from tqdm import tqdm

    from ehrfm import storage
    from ehrfm.tokenize.spark_job import (
        read_events_spark,
        read_labels_spark,
        summarize_spark,
        tokenize_spark,
        write_tokens,
    )

    spark = _spark(cfg)
    meds = layout.meds_uri
    events = read_events_spark(spark, meds)
    labels = read_labels_spark(spark, layout.labels_uri, tasks) if tasks else None
    split_file = _splits(meds)
    splits = spark.read.parquet(storage.spark_uri(split_file)) if split_file else None
    rows = tokenize_spark(events, labels, splits, vocab, bins, cfg.tokenizer, pretrain=cfg.pretrain_rows)
    rows = rows.persist(StorageLevel.MEMORY_AND_DISK)  # written once per target, summarized; tokenized once
    try:
        targets = write_tokens(rows, out, tasks, pretrain=cfg.pretrain_rows)
        for path in tqdm(targets, total=len(tasks) + int(cfg.pretrain_rows), desc="write", unit="table"):
            tqdm.write(f"wrote {_rel(out, path)}")
        table = summarize_spark(rows)
        return table, int(table["rows"].sum())
    finally:
        rows.unpersist()


def _run_local(cfg: TokenizeConfig, layout: Layout, vocab: Vocabulary, bins: Bins,
               tasks: list[str], out_dir: str) -> tuple[pd.DataFrame, int]:
    """Tokenize in this process into ``out_dir`` (local or URI: pyarrow's filesystems); returns the summary
    table (:func:`ehrfm.tokenize.direct.summarize`, exact) and the number of rows."""
    import pyarrow.parquet as pq

    from ehrfm import storage
    from ehrfm.meds_files import read_meds_table
    from ehrfm.schema import CODE, ENCOUNTER_ID, NUMERIC_VALUE, SUBJECT_ID, TIME
    from ehrfm.tokenize import direct

    meds = layout.meds_uri
    table = read_meds_table(meds)
    cols = [c for c in (SUBJECT_ID, TIME, CODE, NUMERIC_VALUE, ENCOUNTER_ID) if c in table.column_names]
    events = table.select(cols).to_pandas()
    labels = direct.read_label_tables(layout.labels_uri, tasks) if tasks else None
    splits = None
    split_file = _splits(meds)
    if split_file:
        fs, path = storage.filesystem(split_file)
        sp = pq.read_table(path, filesystem=fs).to_pandas()
        splits = dict(zip(sp[SUBJECT_ID].astype(int), sp["split"].astype(str), strict=True))
    rows = list(direct.iter_rows(events, labels, splits, vocab, bins, cfg.tokenizer,
                                 pretrain=cfg.pretrain_rows, progress=True))
    out = direct.rows_to_table(rows)
    for path in direct.write_local(out, out_dir, tasks, pretrain=cfg.pretrain_rows):
        print(f"wrote {_rel(out_dir, path)}")
    frame: pd.DataFrame = out.select(["task", "split", "length", "label", "event"]).to_pandas()
    return direct.summarize(frame), len(frame)


def _rel(base: str, path: str) -> str:
    return path[len(base.rstrip("/")):].lstrip("/") if path.startswith(base) else path


def run(cfg: TokenizeConfig, layout: Layout) -> TokenizeSummary:
    """Tokenize ``layout.meds`` (+ label tables) into ``layout.tokens``; write ``tokenize.json``; print and
    return the summary.

    Every folder may be a local path or a URI (``layout.*_uri``): a local tokens folder is staged and
    published atomically (:class:`ehrfm.atomic.Outputs`), a remote one written in place with
    ``tokenize.json`` last."""
    import pandas as pd

    from ehrfm import storage
    from ehrfm.config.spark import resolve_engine
    from ehrfm.prepare.bins import load_bins
    from ehrfm.schema import CODE, SUBJECT_ID, TIME
    from ehrfm.tokenize.meta import meta_text
    from ehrfm.vocab import Vocabulary

    folders = [layout.meds_uri, layout.tokens_uri] + ([layout.labels_uri] if cfg.task_rows else [])
    cfg = cfg.replace(engine=resolve_engine(cfg.engine, cfg.spark.master, folders))  # recorded resolved
    if cfg.engine == "spark":
        _spark(cfg)
    tokens = layout.tokens_uri
    for name, file in (("vocab", TOKENS_VOCAB), ("bins", TOKENS_BINS)):
        if not storage.is_file(storage.join(tokens, file)):
            raise FileNotFoundError(f"tokens={tokens!r}: no {file} (run `ehrfm prepare` first, "
                                    f"which writes the {name})")
    check_meds(layout.meds_uri, (SUBJECT_ID, TIME, CODE))
    vocab = Vocabulary.load(storage.join(tokens, TOKENS_VOCAB))
    bins = load_bins(storage.join(tokens, TOKENS_BINS))
    tasks = resolve_tasks(cfg, layout, vocab)
    t0 = time.time()
    # rows are written under a staging folder and renamed into place with tokenize.json last (ehrfm.atomic;
    # a URI: in place, tokenize.json deleted first and written last); opened before the work, so a partial
    # tokens folder is refused first
    names = ([TOKENS_PRETRAIN] if cfg.pretrain_rows else []) + [f"{TOKENS_TASKS}/{t}" for t in tasks]
    with Outputs(tokens, names, TOKENS_META, overwrite=cfg.overwrite, key="tokens") as staged:
        run_engine = _run_spark if cfg.engine == "spark" else _run_local
        table, n_rows = run_engine(cfg, layout, vocab, bins, tasks, staged.path("."))
        summary = TokenizeSummary(tasks=tasks, pretrain=cfg.pretrain_rows, n_rows=n_rows,
                                  rows=json.loads(table.to_json(orient="records")),
                                  seconds=round(time.time() - t0, 2))
        staged.publish(meta_text(cfg.tokenizer, summary))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"{summary.n_rows} rows (max_len {cfg.tokenizer.max_len}) in {summary.seconds} s → {tokens}")
    return summary
