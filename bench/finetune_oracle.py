"""Finetuned model vs count-feature baselines vs the oracle, per task, on a synthetic population.

Pipeline (each stage skipped when its output exists under ``--root``)::

    ehrfm synth --n_patients N -> ingest fhir -> label -> prepare -> tokenize -> pretrain (tiny)
    -> ehrfm finetune (MTF, every task; variants: full, lora, few-shot K) -> build_report(lr, hgb, cox, truth)

Prints one table (held-out AUROC / Harrell's C / recall@10 with 95% subject-bootstrap CIs, the ratio to the
oracle's AUROC, and the count baselines side by side) and writes ``bench/results/finetune_oracle.json``.

    .venv/bin/python bench/finetune_oracle.py --root /tmp/ft_bench --n-patients 3000
    .venv/bin/python bench/finetune_oracle.py --root /tmp/ft_bench --variants full,lora,fewshot64

Timings on a shared CPU are noisy; the JSON records the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from ehrfm.layout import Layout, RunPaths  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = ["readmission_30d", "mortality_inhospital", "mortality_30d_post_discharge", "los_gt_7d",
         "death_1y_tte",
         "next_visit_codes"]


def _ehrfm(*args: str) -> None:
    cmd = [str(REPO / ".venv" / "bin" / "ehrfm"), *args]
    print("+", " ".join(cmd), flush=True)
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1",
           "PATH": f"{REPO / '.venv' / 'bin'}:{os.environ['PATH']}"}
    subprocess.run(cmd, check=True, env=env, cwd=REPO)


def _layout(root: Path, variant: str | None = None) -> Layout:
    """The bench's pipeline root; each finetuning variant has its own runs folder (shared pretraining)."""
    return Layout(root=str(root), runs=str(root / f"runs_{variant}") if variant else None)


def _overrides(items: list[str]) -> list[str]:
    """``KEY=VALUE`` overrides as the CLI's dotted flags (``--trainer.max_steps 500``)."""
    flags = []
    for item in items:
        key, _, value = item.partition("=")
        flags += [f"--{key}", value]
    return flags


def prepare_data(root: Path, n: int, master: str, pretrain_sets: list[str], max_len: int = 512) -> None:
    """Run the stages whose outputs are missing."""
    lay, r = _layout(root), ["--root", str(root)]
    spark = ["--spark.master", master]
    if not lay.truth.exists():
        _ehrfm("synth", *r, "--n_patients", str(n), "--seed", "0", "--progress", "false")
    if not lay.meds_paths.subject_splits.exists():
        _ehrfm("ingest", "fhir", *r, *spark, "--validate", "none")
    if not lay.label_table("readmission_30d").exists():
        _ehrfm("label", *r, *spark)
    if not lay.token_paths.vocab.exists():
        _ehrfm("prepare", *r, "--engine", "local")
    if not lay.token_paths.tasks.exists():
        _ehrfm("tokenize", *r, "--tokenizer.max_len", str(max_len), "--engine", "local")
    if not (lay.pretrain_run.model / "model.pt").exists():
        _ehrfm("pretrain", *r, "--trainer.progress_bar", "false", *_overrides(pretrain_sets))


def variant_args(name: str) -> list[str]:
    """CLI flags of a variant: ``full``, ``lora``, ``fewshot<K>`` (full finetuning on K rows per task)."""
    if name == "full":
        return []
    if name == "lora":
        return ["--adapt.mode", "lora", "--optim.lr", "3e-3"]
    if name.startswith("fewshot"):
        return ["--adapt.few_shot", name.removeprefix("fewshot")]
    raise SystemExit(f"unknown variant {name!r} (full, lora, fewshot<K>)")


def run_variant(root: Path, name: str, tasks: list[str], sets: list[str]) -> Path:
    """``ehrfm finetune`` for one variant into ``<root>/runs_<name>/finetune`` (skipped when predictions
    exist), starting from the shared pretraining run."""
    run = _layout(root, name).finetune_run
    if not run.predictions.exists():
        _ehrfm("finetune", "--root", str(root), "--runs", str(_layout(root, name).runs_dir),
               "--pretrained", str(_layout(root).pretrain_run.root), "--tasks", f"[{','.join(tasks)}]",
               "--model_name", f"ehrfm_{name}", "--trainer.progress_bar", "false", *variant_args(name),
               *_overrides(sets))
    return run.root


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="working folder (reused between runs)")
    ap.add_argument("--n-patients", type=int, default=3000)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--variants", default="full", help="comma-separated: full, lora, fewshot<K>")
    ap.add_argument("--pretrain-set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--max-len", type=int, default=512, help="tokenize: tokens per row (pretraining and "
                    "finetuning read it from the tokens)")
    ap.add_argument("--baselines", default="lr,hgb,cox")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "finetune_oracle.json")
    args = ap.parse_args(argv)
    import pandas as pd

    from ehrfm.evaluate import ReportConfig, build_report
    from ehrfm.evaluate.stage import primary_table

    load0, t0 = os.getloadavg(), time.time()
    tasks = [t for t in args.tasks.split(",") if t]
    prepare_data(args.root, args.n_patients, args.master, args.pretrain_set, args.max_len)
    timings: dict[str, float] = {"data_and_pretrain_s": round(time.time() - t0, 1)}
    preds = []
    for v in [v for v in args.variants.split(",") if v]:
        t1 = time.time()
        out = run_variant(args.root, v, tasks, args.finetune_set)
        timings[f"finetune_{v}_s"] = round(time.time() - t1, 1)
        preds.append(pd.read_parquet(RunPaths(out).predictions))
    t2 = time.time()
    lay = _layout(args.root)
    truth = lay.truth
    base = args.root / "report_baselines" / "baseline_predictions.parquet"
    if args.baselines and not base.exists():  # fitted once per population, reused by later variants
        build_report(None, lay.labels_dir, lay.meds_paths.root, tasks, base.parent,
                     [b for b in args.baselines.split(",") if b], truth, ReportConfig(n_boot=0),
                     progress=False)
    if args.baselines:
        preds.append(pd.read_parquet(base))
    timings["baselines_s"] = round(time.time() - t2, 1)
    t2 = time.time()
    report = build_report(pd.concat(preds, ignore_index=True), lay.labels_dir, lay.meds_paths.root,
                          tasks,
                          args.root / "report", [], truth, ReportConfig(n_boot=args.bootstrap))
    timings["evaluate_s"] = round(time.time() - t2, 1)
    print(primary_table(report.primary_metrics()))
    rows = summarize(report.to_dict())
    print(f"\n{'task':<30}{'model':<36}{'AUROC/C':>9}{'/oracle':>9}  95% CI")
    for r in rows:
        ratio = "" if r["over_oracle"] is None else f"{r['over_oracle']:.3f}"
        ci = "" if r["ci"][0] is None else f"  [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
        print(f"{r['task']:<30}{r['model']:<36}{_fmt(r['value']):>9}{ratio:>9}{ci}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = {"n_patients": args.n_patients, "tasks": tasks, "variants": args.variants, "rows": rows,
              "timings": timings, "machine": {"cpus": os.cpu_count(), "loadavg_before": load0,
                                              "loadavg_after": os.getloadavg(), "shared": True},
              "pretrain_summary": json.loads(lay.pretrain_run.summary.read_text()),
              "finetune_summaries": {v: _finetune_summary(_layout(args.root, v).finetune_run)
                                     for v in args.variants.split(",")
                                     if v},
              "note": "stages found cached under --root are not re-timed: see the summaries' seconds"}
    args.output.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.output}; full report: {args.root / 'report' / 'report.md'}")
    return 0


def _finetune_summary(run: RunPaths) -> dict[str, Any]:
    s = json.loads(run.summary.read_text())
    return {k: s.get(k)
            for k in ("global_step", "seconds", "mode", "few_shot", "train_rows", "trainable_parameters",
                                  "tuning")}


def _fmt(v: float | None) -> str:
    return "NaN" if v is None else f"{v:.3f}"


def summarize(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (task, model) with the primary metric, its CI and the ratio to the oracle AUROC."""
    rows = []
    for task, res in report["tasks"].items():
        oracle = (res.get("oracle") or {}).get("auroc", {})
        if oracle:
            rows.append({"task": task, "model": "oracle (true prob)", "metric": "auroc",
                         "value": oracle.get("value"),
                         "ci": [oracle.get("ci_low"), oracle.get("ci_high")], "over_oracle": 1.0,
                         "n": res["oracle"]["n"]})
        for model, info in res["models"].items():
            mets = info.get("metrics", {})
            key = {"binary": "auroc", "tte": "harrell_c"}.get(res["kind"]) or next(
                (k for k in mets if k.startswith("recall")), next(iter(mets), ""))
            m = mets.get(key) or {}
            rows.append({"task": task, "model": model, "metric": key, "value": m.get("value"),
                         "ci": [m.get("ci_low"), m.get("ci_high")],
                         "over_oracle": info.get("auroc_over_oracle"),
                         "n": info.get("n")})
        for d in res.get("vs_baselines", []):  # paired: model - baseline AUROC on the same subjects
            m = d["delta_auroc"]
            rows.append({"task": task, "model": f"{d['model']} - {d['baseline']}", "metric": "delta_auroc",
                         "value": m.get("value"), "ci": [m.get("ci_low"), m.get("ci_high")],
                         "over_oracle": None,
                         "n": d["n"]})
    return rows


if __name__ == "__main__":
    sys.exit(main())
