"""Whole-history context: does a longer row help? Train and evaluate at several ``max_len`` on one population.

For each length L (default 256, 1,024, 4,096, 16,384) the population is tokenized at L (rows keep their most
recent tokens) into ``<root>/tokens_L<L>``, then pretrained and MTF-finetuned into ``<root>/runs_L<L>`` with
the same steps, model and token budget at every length: token-budget batches of ``--batch-tokens`` tokens
after padding, and ``data.long_rows=alone`` so a row longer than the budget trains as a batch of its own
(memory stays bounded by the budget or one row). The held-out predictions of every length, the count
baselines and the oracle (the generator's true probabilities) go through one ``build_report``: AUROC with
95% subject-bootstrap CIs and AUROC / oracle AUROC, for readmission and in-hospital mortality.
An untruncated tokenization (``max_len`` 1,000,000, lengths only) gives the share of rows each L truncates.

Per length the JSON also records training cost: CPU seconds (user + system of the ``ehrfm`` process, from
``getrusage``) and wall seconds per optimizer step of pretraining and finetuning (process start and
validation included: small against thousands of steps), and the mean padded tokens of a pretraining step.
A length at which the previous one already truncated no row sees exactly the rows of the previous one: it
is not retrained, and the table says so. Full-history lengths of the synthetic population (measured
2026-12-05 with this script's untruncated tokenization): at the default ``--years 10`` every history is
shorter than ~1k tokens (300 patients: p50 195, p99 942, max 999), so 1,024 cuts almost nothing and 4,096
and 16,384 nothing; ``--years 50`` (the generator's longest record) gives p50 860, p90 2,070, p99 4,170,
max 5,000 (200 patients): 4,096 cuts ~2% of rows and 16,384 none. No synthetic history reaches 16k tokens.

    # smoke (< 4 min): proves the pipeline end to end, numbers meaningless
    .venv/bin/python bench/context_length.py --root /tmp/ctx_smoke --patients 300 --lengths 64,256 \
        --pretrain-steps 6 --finetune-steps 6 --batch-tokens 1024 --bootstrap 20 \
        --output /tmp/ctx_smoke/context_length.json
    # the study (30k patients, quiet machine): ~7 h on this 2-core VM, see below; and with long records
    .venv/bin/python bench/context_length.py --root /tmp/ctx_30k --patients 30000
    .venv/bin/python bench/context_length.py --root /tmp/ctx_30k_y50 --patients 30000 --years 50 \
        --output bench/results/context_length_years50.json

Estimate for the study on this VM (2 cores, nothing else running), from the 30k finetune_oracle runs
(mamba2 d_model 64: pretraining ~0.17 ms and finetuning ~0.13 ms of wall time per padded token) and
bench/backbones.py (linear in L at a fixed token budget; a 16k row alone costs about two 8k-token steps):
synth + ingest + label + prepare ~30 min, five tokenizations ~15 min; per trained length 2,000
pretraining steps x 8,192 tokens ~47 min and 4,000 finetuning steps x 8,192 tokens ~70 min, so ~2 h; at
--years 10 two or three lengths train (4,096 and 16,384 see the rows of 1,024), ~4-6 h; prediction,
baselines and the bootstrap report ~10 min. Total ~5-7 h (~9 h if every length trained). At --years 50
histories are ~4x longer (tokenizing ~4x longer, ~3x the task rows), training costs the same (fixed
steps x tokens) and 16,384 is skipped: ~8 h. The CPU seconds per step are only comparable between
lengths measured in one quiet run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.finetune_oracle import _ehrfm, _fmt, _overrides, summarize  # noqa: E402
from ehrfm.layout import Layout, TokenPaths  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = ["readmission_30d", "mortality_inhospital"]
LENGTHS = [256, 1024, 4096, 16384]
UNTRUNCATED = 1_000_000
"""max_len of the reference tokenization: longer than any history, so its row lengths are the full ones."""


def _children_cpu() -> float:
    """User + system CPU seconds of the waited-for child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(*args: str) -> dict[str, float]:
    """Run ``ehrfm *args``; its wall and CPU seconds."""
    w0, c0 = time.time(), _children_cpu()
    _ehrfm(*args)
    return {"wall_s": round(time.time() - w0, 1), "cpu_s": round(_children_cpu() - c0, 1)}


def prepare_population(root: Path, n: int, years: int) -> None:
    """synth -> ingest -> label -> prepare with the local engines (each skipped when its output exists)."""
    lay, r = Layout(root=str(root)), ["--root", str(root)]
    if not lay.truth.exists():
        # the record always ends on Jan 1 2025 (as the default 2015 + 10): a later end would put events in
        # the future, which ingest rejects
        _ehrfm("synth", *r, "--n_patients", str(n), "--seed", "0", "--years", str(years),
               "--start_year", str(2025 - years), "--progress", "false")
    if not lay.meds_paths.subject_splits.exists():
        _ehrfm("ingest", "fhir", *r, "--engine", "local", "--validate", "none")
    if not lay.label_table(TASKS[0]).exists():
        _ehrfm("label", *r, "--engine", "local")
    if not lay.token_paths.vocab.exists():
        _ehrfm("prepare", *r, "--engine", "local")


def tokens_at(root: Path, length: int) -> Path:
    """``<root>/tokens_L<length>``: the prepared vocabulary and bins, tokenized at ``length`` (cached)."""
    shared, out = Layout(root=str(root)).token_paths, TokenPaths(root / f"tokens_L{length}")
    if not out.meta.exists():
        out.root.mkdir(parents=True, exist_ok=True)
        for f in (shared.vocab, shared.bins, shared.prepare_json):
            if f.exists():
                shutil.copy2(f, out.root / f.name)
        _ehrfm("tokenize", "--root", str(root), "--tokens", str(out.root), "--tokenizer.max_len", str(length),
               "--engine", "local")
    return out.root


def row_lengths(tokens: Path, split: str | None = None) -> dict[str, Any]:
    """Token counts of the pretraining rows and of each task's rows (``split`` only, when given)."""
    import pyarrow.dataset as pads

    paths = TokenPaths(tokens)
    out: dict[str, Any] = {}
    for name, folder in [("pretrain", paths.pretrain)] + [(t, paths.task(t)) for t in TASKS]:
        table = pads.dataset(folder, format="parquet").to_table(columns=["length", "split"])
        frame = table.to_pandas()
        if split is not None:
            frame = frame[frame["split"] == split]
        out[name] = frame["length"].to_numpy()
    return out


def truncation_shares(full: dict[str, Any], lengths: list[int]) -> dict[str, dict[str, float]]:
    """Per row kind: share of rows whose untruncated length exceeds each L (= rows the tokenizer cuts),
    and the quantiles of the untruncated lengths."""
    import numpy as np

    out: dict[str, dict[str, float]] = {}
    for kind, n in full.items():
        row = {f"truncated_at_{L}": round(float(np.mean(n > L)), 4) for L in lengths}
        row.update({f"p{q}": float(np.percentile(n, q)) for q in (50, 90, 99)})
        row["max"], row["rows"] = float(n.max()), float(len(n))
        out[kind] = row
    return out


def train_at(root: Path, tokens: Path, length: int, args: argparse.Namespace) -> dict[str, Any]:
    """Pretrain + finetune at one length (each skipped when done); their cost per optimizer step."""
    lay = Layout(root=str(root), tokens=str(tokens), runs=str(root / f"runs_L{length}"))
    common = ["--root", str(root), "--tokens", str(tokens), "--runs", str(lay.runs_dir),
              "--trainer.progress_bar", "false", "--data.max_tokens", str(args.batch_tokens),
              "--data.long_rows", "alone"]
    cost: dict[str, Any] = {}
    if not (lay.pretrain_run.model / "model.pt").exists():
        cost["pretrain"] = _timed("pretrain", *common, "--trainer.max_steps", str(args.pretrain_steps),
                                  *_overrides(args.pretrain_set))
    if not lay.finetune_run.predictions.exists():
        cost["finetune"] = _timed("finetune", *common, "--pretrained", str(lay.pretrain_run.root),
                                  "--tasks", f"[{','.join(TASKS)}]", "--model_name", f"ehrfm_L{length}",
                                  "--trainer.max_steps", str(args.finetune_steps),
                                  *_overrides(args.finetune_set))
    for stage, run in (("pretrain", lay.pretrain_run), ("finetune", lay.finetune_run)):
        summary = json.loads(run.summary.read_text())
        steps = max(1, int(summary["global_step"]))
        c = cost.setdefault(stage, {"note": "cached run: cost not re-measured"})
        c.update({"steps": steps, "summary_seconds": summary.get("seconds")})
        if "cpu_s" in c:
            c["cpu_s_per_step"] = round(c["cpu_s"] / steps, 3)
            c["wall_s_per_step"] = round(c["wall_s"] / steps, 3)
    return {"runs": str(lay.runs_dir), "predictions": str(lay.finetune_run.predictions), "cost": cost}


def mean_step_tokens(tokens: Path, budget: int, length: int, seed: int = 0) -> float:
    """Mean padded tokens (rows x padded width) of a pretraining micro-batch at this budget (one epoch)."""
    from ehrfm.data import TokenBudgetBatchSampler

    lengths = row_lengths(tokens, "train")["pretrain"]
    sampler = TokenBudgetBatchSampler(lengths, budget, seed=seed, max_len=length, long_rows="alone")
    plan = sampler.plan(0)
    return round(sum(len(b) * max(int(sampler.padded[i]) for i in b) for b in plan) / max(1, len(plan)), 1)


def table(rows: list[dict[str, Any]], lengths: list[int], costs: dict[int, dict[str, Any]],
          shares: dict[str, dict[str, float]]) -> str:
    """Markdown: per task and model (one per length, the baselines, the oracle) AUROC [95% CI] and the
    ratio to the oracle; then per length the truncated shares and the CPU seconds per step."""
    out = ["| task | model | AUROC | 95% CI | / oracle |", "|---|---|---|---|---|"]
    for r in rows:
        if r["metric"] != "auroc" or r["task"] not in TASKS:
            continue
        ci = "" if r["ci"][0] is None else f"{r['ci'][0]:.3f}–{r['ci'][1]:.3f}"
        ratio = "" if r["over_oracle"] is None else f"{r['over_oracle']:.3f}"
        out.append(f"| {r['task']} | {r['model']} | {_fmt(r['value'])} | {ci} | {ratio} |")
    head = ["max_len", "pretrain rows cut", "readmission rows cut", "mortality rows cut",
            "pretrain CPU s/step", "finetune CPU s/step", "tokens/step"]
    out += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for L in lengths:
        cut = [shares.get(k, {}).get(f"truncated_at_{L}") for k in ["pretrain", *TASKS]]
        c = costs.get(L, {})
        if "same_as" in c:
            out.append(f"| {L:,} | " + " | ".join(f"{v:.1%}" for v in cut if v is not None)
                       + f" | not trained: the rows of {c['same_as']:,} | | |")
            continue
        per = [c.get("cost", {}).get(s, {}).get("cpu_s_per_step") for s in ("pretrain", "finetune")]
        out.append(f"| {L:,} | " + " | ".join("" if v is None else f"{v:.1%}" for v in cut) + " | "
                   + " | ".join("" if v is None else f"{v:.2f}" for v in per)
                   + f" | {c.get('mean_step_tokens', '')} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run every length, evaluate them together, print the tables, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="working folder (reused between runs)")
    ap.add_argument("--patients", type=int, default=30000)
    ap.add_argument("--years", type=int, default=10,
                    help="synth: length of the record in years (ending Jan 1 2025; 1..50)")
    ap.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    ap.add_argument("--batch-tokens", type=int, default=8192, help="token budget per micro-batch (padded)")
    ap.add_argument("--pretrain-steps", type=int, default=2000)
    ap.add_argument("--finetune-steps", type=int, default=4000)
    ap.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--baselines", default="lr,hgb")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "context_length.json")
    args = ap.parse_args(argv)
    import pandas as pd

    from ehrfm.evaluate import ReportConfig, build_report

    load0, t0 = os.getloadavg(), time.time()
    lengths = [int(x) for x in args.lengths.split(",") if x]
    prepare_population(args.root, args.patients, args.years)
    timings: dict[str, float] = {"population_s": round(time.time() - t0, 1)}
    t1 = time.time()
    shares = truncation_shares(row_lengths(tokens_at(args.root, UNTRUNCATED)), lengths)
    timings["untruncated_tokenize_s"] = round(time.time() - t1, 1)
    runs: dict[int, dict[str, Any]] = {}
    trained: list[int] = []
    for L in lengths:
        prev = trained[-1] if trained else None
        if prev is not None and all(v[f"truncated_at_{prev}"] == 0 for v in shares.values()):
            runs[L] = {"same_as": prev, "note": f"no row is longer than {prev} tokens: the rows of {prev}"}
            continue
        trained.append(L)
        t1 = time.time()
        tokens = tokens_at(args.root, L)
        timings[f"tokenize_L{L}_s"] = round(time.time() - t1, 1)
        runs[L] = train_at(args.root, tokens, L, args)
        runs[L]["mean_step_tokens"] = mean_step_tokens(tokens, args.batch_tokens, L)
        timings[f"train_L{L}_s"] = round(time.time() - t1, 1)
    lay = Layout(root=str(args.root))
    preds = [pd.read_parquet(runs[L]["predictions"]) for L in trained]
    base = args.root / "report_baselines" / "baseline_predictions.parquet"
    if args.baselines and not base.exists():  # fitted once per population: they do not depend on max_len
        build_report(None, lay.labels_dir, lay.meds_paths.root, TASKS, base.parent,
                     [b for b in args.baselines.split(",") if b], lay.truth, ReportConfig(n_boot=0),
                     progress=False)
    if args.baselines:
        preds.append(pd.read_parquet(base))
    t1 = time.time()
    report = build_report(pd.concat(preds, ignore_index=True), lay.labels_dir, lay.meds_paths.root, TASKS,
                          args.root / "report", [], lay.truth, ReportConfig(n_boot=args.bootstrap),
                          progress=False)
    timings["evaluate_s"] = round(time.time() - t1, 1)
    rows = summarize(report.to_dict())
    md = table(rows, lengths, runs, shares)
    print(md)
    result = {"patients": args.patients, "years": args.years, "lengths": lengths, "trained": trained,
              "tasks": TASKS,
              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "rows": rows, "truncation": shares, "runs": {str(L): runs[L] for L in lengths},
              "timings": timings, "table_md": md,
              "machine": {"cpus": os.cpu_count(), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
                          "shared": True}}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.output}; full report: {args.root / 'report' / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
