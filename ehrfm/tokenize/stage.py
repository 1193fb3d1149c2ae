"""``ehrfm tokenize`` stage: ``run(TokenizeConfig, Layout) -> TokenizeSummary``.

Reads the MEDS events of ``layout.meds``, the label tables of ``layout.labels`` and the ``vocab.json`` /
``bins.json`` that ``ehrfm prepare`` wrote into ``layout.tokens``; writes ``tokens/pretrain/`` (one row per
subject), ``tokens/tasks/<task>/`` (one row per label) and ``tokens/tokenize.json`` (the tokenizer config,
``max_len`` included, and the summary: :mod:`ehrfm.tokenize.meta`), and prints the summary table.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ehrfm.atomic import Outputs, check_meds
from ehrfm.config.base import ConfigError
from ehrfm.config.tokenize import TokenizeConfig, TokenizeSummary
from ehrfm.layout import Layout, TokenPaths

if TYPE_CHECKING:
    import pandas as pd

    from ehrfm.prepare.bins import Bins
    from ehrfm.vocab import Vocabulary


def resolve_tasks(cfg: TokenizeConfig, layout: Layout, vocab: Vocabulary) -> list[str]:
    """Tasks to write task rows for: none (``task_rows`` false), the named ones, or every label table in
    ``layout.labels``; each needs a label table and a prompt token in the vocabulary."""
    if not cfg.task_rows:
        return []
    from ehrfm.schema import task_token

    folder = layout.labels_dir
    if not folder.is_dir():
        raise FileNotFoundError(f"labels={str(folder)!r}: not a folder (run `ehrfm label`, or set task_rows "
                                "false for pretraining rows only)")
    present = layout.label_tasks()
    tasks = list(dict.fromkeys(t.strip() for t in cfg.tasks)) if cfg.tasks else present
    for t in tasks:
        if t not in present:
            raise FileNotFoundError(f"task {t!r}: no label table {layout.label_table(t)} "
                                    f"(present: {present})")
        if task_token(t) not in vocab:
            raise ConfigError(f"tasks={tasks}: task {t!r} has no prompt token {task_token(t)} in the "
                              f"vocabulary {layout.token_paths.vocab}; rerun `ehrfm prepare` with it in "
                              "--tasks")
    return tasks


def _run_spark(cfg: TokenizeConfig, layout: Layout, vocab: Vocabulary, bins: Bins,
               tasks: list[str], out: str) -> pd.DataFrame:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark import StorageLevel
    from tqdm import tqdm

    from ehrfm.spark import get_spark
    from ehrfm.tokenize.spark_job import read_events_spark, read_labels_spark, tokenize_spark, write_tokens

    spark = get_spark("ehrfm-tokenize", master=cfg.spark.master, conf=cfg.spark.conf)
    meds = layout.meds_paths
    events = read_events_spark(spark, meds.root)
    labels = read_labels_spark(spark, layout.labels_dir, tasks) if tasks else None
    splits = spark.read.parquet(str(meds.subject_splits)) if meds.subject_splits.exists() else None
    rows = tokenize_spark(events, labels, splits, vocab, bins, cfg.tokenizer, pretrain=cfg.pretrain_rows)
    rows = rows.persist(StorageLevel.MEMORY_AND_DISK)  # written once per target; tokenize only once
    try:
        targets = write_tokens(rows, out, tasks, pretrain=cfg.pretrain_rows)
        for path in tqdm(targets, total=len(tasks) + int(cfg.pretrain_rows), desc="write", unit="table"):
            tqdm.write(f"wrote {Path(path).relative_to(out)}")
        return rows.select("task", "split", "length", "label", "event").toPandas()
    finally:
        rows.unpersist()


def _run_local(cfg: TokenizeConfig, layout: Layout, vocab: Vocabulary, bins: Bins,
               tasks: list[str], out_dir: str) -> pd.DataFrame:
    import pyarrow.parquet as pq

    from ehrfm.schema import CODE, ENCOUNTER_ID, NUMERIC_VALUE, SUBJECT_ID, TIME
    from ehrfm.tokenize.direct import iter_rows, read_label_tables, rows_to_table, write_local

    meds = layout.meds_paths
    table = meds.read_table()
    cols = [c for c in (SUBJECT_ID, TIME, CODE, NUMERIC_VALUE, ENCOUNTER_ID) if c in table.column_names]
    events = table.select(cols).to_pandas()
    labels = read_label_tables(layout.labels_dir, tasks) if tasks else None
    splits = None
    if meds.subject_splits.exists():
        sp = pq.read_table(meds.subject_splits).to_pandas()
        splits = dict(zip(sp[SUBJECT_ID].astype(int), sp["split"].astype(str), strict=True))
    rows = list(iter_rows(events, labels, splits, vocab, bins, cfg.tokenizer, pretrain=cfg.pretrain_rows,
                          progress=True))
    out = rows_to_table(rows)
    for path in write_local(out, out_dir, tasks, pretrain=cfg.pretrain_rows):
        print(f"wrote {Path(path).relative_to(out_dir)}")
    frame: pd.DataFrame = out.select(["task", "split", "length", "label", "event"]).to_pandas()
    return frame


def _rel(paths: TokenPaths, path: Path) -> str:
    return path.relative_to(paths.root).as_posix()


def run(cfg: TokenizeConfig, layout: Layout) -> TokenizeSummary:
    """Tokenize ``layout.meds`` (+ label tables) into ``layout.tokens``; write ``tokenize.json``; print and
    return the summary."""
    import pandas as pd

    from ehrfm.prepare.bins import load_bins
    from ehrfm.schema import CODE, SUBJECT_ID, TIME
    from ehrfm.tokenize.direct import summarize
    from ehrfm.tokenize.meta import write_meta
    from ehrfm.vocab import Vocabulary

    paths = layout.token_paths
    for name, path in (("vocab", paths.vocab), ("bins", paths.bins)):
        if not path.is_file():
            raise FileNotFoundError(f"tokens={str(paths.root)!r}: no {path.name} (run `ehrfm prepare` first, "
                                    f"which writes the {name})")
    check_meds(layout.meds_paths.root, (SUBJECT_ID, TIME, CODE))
    vocab = Vocabulary.load(paths.vocab)
    bins = load_bins(paths.bins)
    tasks = resolve_tasks(cfg, layout, vocab)
    t0 = time.time()
    # rows are written under a staging folder and renamed into place with tokenize.json last (ehrfm.atomic);
    # opened before the work, so a partial tokens folder is refused first
    names = ([_rel(paths, paths.pretrain)] if cfg.pretrain_rows else []) + [_rel(paths, paths.task(t))
                                                                             for t in tasks]
    with Outputs(paths.root, names, paths.meta.name, overwrite=cfg.overwrite, key="tokens") as staged:
        run_engine = _run_spark if cfg.engine == "spark" else _run_local
        frame = run_engine(cfg, layout, vocab, bins, tasks, str(staged.staging))
        table = summarize(frame)
        summary = TokenizeSummary(tasks=tasks, pretrain=cfg.pretrain_rows, n_rows=len(frame),
                                  rows=json.loads(table.to_json(orient="records")),
                                  seconds=round(time.time() - t0, 2))
        write_meta(staged.staging, cfg.tokenizer, summary)
        staged.publish()
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"{summary.n_rows} rows (max_len {cfg.tokenizer.max_len}) in {summary.seconds} s → {paths.root}")
    return summary
