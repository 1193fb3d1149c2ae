"""Zero-shot risk by query-conditioned pretraining (docs/query.md) beside simulated futures, the MTF-finetuned
heads, the count baselines and the oracle, on one synthetic population, in one run.

Pipeline (each stage skipped when its output exists under ``--root``; the data, finetune and simulate stages
are ``bench/zero_shot.py``'s, so a root it filled is reused)::

    ehrfm synth -> ingest -> label -> prepare -> tokenize -> pretrain (next-token only) -> finetune (MTF)
    -> ehrfm simulate --samples M (held-out rows)                  -> <root>/runs/simulate/zero_shot_m<M>/
    -> ehrfm pretrain --query.weight W  (<root>/query_pretrain/, the same tokens)
    -> our tasks as queries on the held-out task rows             -> <root>/runs/simulate/query_zero_shot/
    -> ehrfm evaluate --report.baselines [lr,hgb]  (finetuned, every zero-shot model, baselines, oracle)
    -> held-out (code, horizon) queries at cut points of held-out patients' rows: AUROC (subject-bootstrap
       CI) and ECE of the query model and of a count baseline (occurrences of the code before the cut)

Prints the task table and the held-out-query table, writes ``bench/results/query_zero_shot.json``.

    .venv/bin/python bench/query_zero_shot.py --root /tmp/zs_bench --n-patients 2500
    .venv/bin/python bench/query_zero_shot.py --root /tmp/q_smoke --n-patients 300 --ms 2 --bootstrap 0 \\
        --pretrain-set trainer.max_steps=20 --finetune-set trainer.max_steps=20 \\
        --query-set trainer.max_steps=20   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_oracle import _ehrfm, _overrides, prepare_data  # noqa: E402
from zero_shot import (  # noqa: E402
    _f,
    common_args,
    evaluate,
    finetune,
    model_name,
    print_table,
    simulate,
    table,
    write_result,
)

from ehrfm.layout import Layout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
QUERY_MODEL = "query_zero_shot"


def query_pretrain(root: Path, sets: list[str]) -> tuple[Layout, float]:
    """``ehrfm pretrain`` with the query objective into ``<root>/query_pretrain`` (the shared tokens) unless
    its model exists; returns its layout and the seconds."""
    lay = Layout(root=str(root / "query_pretrain"), tokens=str(Layout(root=str(root)).token_paths.root))
    if (lay.pretrain_run.model / "model.pt").exists():
        return lay, 0.0
    t = time.time()
    _ehrfm("pretrain", "--root", lay.root, "--tokens", str(lay.token_paths.root), "--trainer.progress_bar",
           "false", *_overrides(sets))
    return lay, time.time() - t


def predict_tasks(root: Path, qlay: Layout, tasks: list[str], splits: list[str]) -> dict[str, Any]:
    """Our tasks as queries on the task rows of ``splits``, written as the ``query_zero_shot`` run beside the
    simulation runs (``ehrfm evaluate`` picks it up); returns its summary."""
    from ehrfm.train.query import write_task_predictions

    return write_task_predictions(Layout(root=str(root)), qlay.pretrain_run.model, tasks, splits, QUERY_MODEL)


def _metric_fns(y: np.ndarray, p: np.ndarray, c: np.ndarray) -> dict[str, Any]:
    from ehrfm.evaluate.binary import auroc, ece

    return {"auroc": lambda ix: auroc(y[ix], p[ix]), "ece": lambda ix: ece(y[ix], p[ix]),
            "count_auroc": lambda ix: auroc(y[ix], c[ix])}


def heldout_table(root: Path, qlay: Layout, cuts_per_row: int, n_boot: int, min_class: int
                  ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """AUROC (subject-bootstrap CI) and ECE per held-out (code, horizon) query with at least ``min_class``
    positives and negatives, for the query model and the prior-count baseline."""
    import pandas as pd
    import torch

    from ehrfm.config.train import PretrainConfig
    from ehrfm.data import TokenStreamDataset
    from ehrfm.data.collate import Collator
    from ehrfm.evaluate.bootstrap import bootstrap_metrics
    from ehrfm.models import EHRFoundationModel
    from ehrfm.schema import HELD_OUT_SPLIT
    from ehrfm.train.query import answer_frame, death_token, heldout_queries
    from ehrfm.vocab import Vocabulary

    lay = Layout(root=str(root))
    cfg = PretrainConfig.load(qlay.pretrain_run.config).query
    vocab = Vocabulary.load(lay.token_paths.vocab)
    model = EHRFoundationModel.from_pretrained(qlay.pretrain_run.model).eval()
    queries = heldout_queries(vocab, cfg, (7.0, 30.0, 90.0, 365.0))
    ds = TokenStreamDataset(lay.token_paths.pretrain, split=HELD_OUT_SPLIT)
    collate, gen = Collator(), torch.Generator().manual_seed(0)
    cols: dict[str, list[Any]] = {}
    t0 = time.time()
    for i in range(0, len(ds), 16):
        items = [ds[j] for j in range(i, min(i + 16, len(ds)))]
        part = answer_frame(model, collate(items), [it["subject_id"] for it in items], queries, cuts_per_row,
                            gen, death_token(vocab))
        for k, v in part.items():
            cols.setdefault(k, []).extend(v)
    df = pd.DataFrame(cols)
    rows = []
    for q, g in df.groupby("query", sort=True):
        y, pos = g["label"].to_numpy(), int(g["label"].sum())
        if pos < min_class or len(g) - pos < min_class:
            continue
        groups = g["subject_id"].to_numpy()
        p, c = g["prob"].to_numpy(), g["prior_count"].to_numpy().astype(float)
        m = bootstrap_metrics(_metric_fns(y, p, c), groups, n_boot=n_boot)
        rows.append({"query": q, "n": len(g), "positives": pos, "auroc": m["auroc"].value,
                     "auroc_ci": [m["auroc"].ci_low, m["auroc"].ci_high], "ece": m["ece"].value,
                     "count_auroc": m["count_auroc"].value,
                     "count_auroc_ci": [m["count_auroc"].ci_low, m["count_auroc"].ci_high],
                     "mean_prob": float(p.mean()), "rate": pos / len(g)})
    info = {"queries_asked": len(queries), "queries_reported": len(rows), "answers": len(df),
            "held_out_rows": len(ds), "cuts_per_row": cuts_per_row, "min_class": min_class,
            "seconds": round(time.time() - t0, 1),
            "heldout_codes": sorted({q.name.split(" within ")[0] for q in queries})}
    return rows, info


def print_heldout(rows: list[dict[str, Any]]) -> None:
    """The held-out-query table and its means."""
    print(f"\n{'held-out query':<48}{'n':>6}{'pos':>6}{'AUROC':>8}  {'95% CI':<16}{'ECE':>7}{'count':>8}")
    for r in rows:
        ci = r["auroc_ci"]
        ci_s = "" if ci[0] is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"
        print(f"{r['query']:<48}{r['n']:>6}{r['positives']:>6}{_f(r['auroc']):>8}  {ci_s:<16}"
              f"{_f(r['ece']):>7}{_f(r['count_auroc']):>8}")
    if rows:
        a = np.array([r["auroc"] for r in rows])
        c = np.array([r["count_auroc"] for r in rows])
        print(f"mean over {len(rows)} queries: AUROC {np.nanmean(a):.3f} (count baseline "
              f"{np.nanmean(c):.3f}); query model better on {int(np.sum(a > c))}/{len(rows)}")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the missing stages, evaluate, print the tables, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    common_args(ap)
    ap.add_argument("--query-set", action="append", default=[], metavar="KEY=VALUE",
                    help="the query pretraining (default: --pretrain-set's steps, query.weight=1)")
    ap.add_argument("--cuts-per-row", type=int, default=8, help="cuts per held-out row for held-out queries")
    ap.add_argument("--min-class", type=int, default=10, help="a held-out query is reported with at least "
                    "this many positives and negatives")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "query_zero_shot.json")
    args = ap.parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    ms = [int(m) for m in args.ms.split(",") if m]
    pre = args.pretrain_set or ["trainer.max_steps=2000", "trainer.val_check_interval=500"]
    fin = args.finetune_set or ["trainer.max_steps=1000", "trainer.val_check_interval=250", "patience=0"]
    qset = ["query.weight=1", *pre, "tracking.enabled=false", *args.query_set]
    load0, t0 = os.getloadavg(), time.time()
    prepare_data(args.root, args.n_patients, args.master, pre, args.max_len)
    timings: dict[str, float] = {"data_and_pretrain_s": round(time.time() - t0, 1)}
    timings["finetune_s"] = round(finetune(args.root, tasks, fin), 1)
    sims = {model_name(m, 0): simulate(args.root, m, 0, tasks, []) for m in ms}
    qlay, timings["query_pretrain_s"] = query_pretrain(args.root, qset)
    t = time.time()
    qsummary = predict_tasks(args.root, qlay, tasks, ["held_out"])
    timings["query_predict_s"] = round(time.time() - t, 1)
    report, timings["evaluate_with_baselines_s"] = evaluate(args.root, tasks, args.bootstrap)
    lay = Layout(root=str(args.root))
    rows = table(report, sims, tasks)
    for r in rows:
        if r["model"] == QUERY_MODEL:
            r["seconds_per_row"] = qsummary["seconds_per_row"].get(r["task"])
    print_table(rows)
    held, held_info = heldout_table(args.root, qlay, args.cuts_per_row, args.bootstrap, args.min_class)
    print_heldout(held)
    result = {"n_patients": args.n_patients, "tasks": tasks, "ms": ms, "rows": rows, "task_queries":
              qsummary["queries"], "heldout_rows": held, "heldout_info": held_info, "timings": timings,
              "query_pretrain_summary": json.loads(qlay.pretrain_run.summary.read_text()),
              "pretrain_summary": json.loads(lay.pretrain_run.summary.read_text()),
              "note": "task rows: held-out split only; stages found cached under --root are not re-timed"}
    write_result(args.output, result, load0, lay)
    return 0


if __name__ == "__main__":
    sys.exit(main())
