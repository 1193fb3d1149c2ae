"""Finetuned model vs count-feature baselines vs the oracle, per task, on a synthetic population.

Pipeline (each stage skipped when its output exists under ``--root``)::

    ehrfm synth --n-patients N -> ingest fhir -> label -> prepare -> tokenize -> pretrain (tiny)
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


def prepare_data(root: Path, n: int, master: str, pretrain_sets: list[str], max_len: int = 512) -> None:
    """Run the stages whose outputs are missing."""
    if not (root / "synth" / "truth").exists():
        _ehrfm("synth", "--n-patients", str(n), "--seed", "0", "--output", str(root / "synth"),
               "--no-progress")
    if not (root / "meds" / "metadata" / "subject_splits.parquet").exists():
        _ehrfm("ingest", "fhir", "--input", str(root / "synth"), "--output", str(root / "meds"), "--master",
               master,
               "--validate", "none")
    if not (root / "labels" / "readmission_30d.parquet").exists():
        _ehrfm("label", "--meds", str(root / "meds"), "--output", str(root / "labels"), "--master", master)
    if not (root / "tokens" / "vocab.json").exists():
        _ehrfm("prepare", "--meds", str(root / "meds"), "--output", str(root / "tokens"), "--engine", "local")
    if not (root / "tokens" / "tasks").exists():
        _ehrfm("tokenize", "--meds", str(root / "meds"), "--labels", str(root / "labels"), "--output",
               str(root / "tokens"), "--max-len", str(max_len), "--engine", "local")
    if not (root / "pretrain" / "model" / "model.pt").exists():
        sets = [x for s in pretrain_sets for x in ("--set", s)]
        _ehrfm("pretrain", "--data", str(root / "tokens"), "--output", str(root / "pretrain"),
               "--set", "trainer.progress_bar=false", *sets)


def variant_args(name: str) -> list[str]:
    """CLI flags of a variant: ``full``, ``lora``, ``fewshot<K>`` (full finetuning on K rows per task)."""
    if name == "full":
        return []
    if name == "lora":
        return ["--lora", "--set", "optim.lr=3e-3"]
    if name.startswith("fewshot"):
        return ["--few-shot", name.removeprefix("fewshot")]
    raise SystemExit(f"unknown variant {name!r} (full, lora, fewshot<K>)")


def run_variant(root: Path, name: str, tasks: list[str], sets: list[str]) -> Path:
    """``ehrfm finetune`` for one variant into ``<root>/finetune_<name>`` (skipped when predictions exist)."""
    out = root / f"finetune_{name}"
    if not (out / "predictions.parquet").exists():
        extra = [x for s in sets for x in ("--set", s)]
        _ehrfm("finetune", "--checkpoint", str(root / "pretrain"), "--data", str(root / "tokens"), "--tasks",
               ",".join(tasks), "--output", str(out), "--set", f"model_name=ehrfm_{name}",
               "--set", "trainer.progress_bar=false", *variant_args(name), *extra)
    return out


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
    ap.add_argument("--max-len", type=int, default=512, help="tokenize: tokens per row (pretrain/finetune "
                    "data.max_len follow only via --pretrain-set/--finetune-set)")
    ap.add_argument("--baselines", default="lr,hgb,cox")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "finetune_oracle.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    import pandas as pd
    from ehrfm.train.finetune_cli import report_table

    from ehrfm.evaluate import ReportConfig, build_report

    load0, t0 = os.getloadavg(), time.time()
    tasks = [t for t in args.tasks.split(",") if t]
    prepare_data(args.root, args.n_patients, args.master, args.pretrain_set, args.max_len)
    timings: dict[str, float] = {"data_and_pretrain_s": round(time.time() - t0, 1)}
    preds = []
    for v in [v for v in args.variants.split(",") if v]:
        t1 = time.time()
        out = run_variant(args.root, v, tasks, args.finetune_set)
        timings[f"finetune_{v}_s"] = round(time.time() - t1, 1)
        preds.append(pd.read_parquet(out / "predictions.parquet"))
    t2 = time.time()
    truth = args.root / "synth" / "truth" / "index_events.parquet"
    base = args.root / "report_baselines" / "baseline_predictions.parquet"
    if args.baselines and not base.exists():  # fitted once per population, reused by later variants
        build_report(None, args.root / "labels", args.root / "meds", tasks, base.parent,
                     [b for b in args.baselines.split(",") if b], truth, ReportConfig(n_boot=0),
                     progress=False)
    if args.baselines:
        preds.append(pd.read_parquet(base))
    timings["baselines_s"] = round(time.time() - t2, 1)
    t2 = time.time()
    report = build_report(pd.concat(preds, ignore_index=True), args.root / "labels", args.root / "meds",
                          tasks,
                          args.root / "report", [], truth, ReportConfig(n_boot=args.bootstrap))
    timings["evaluate_s"] = round(time.time() - t2, 1)
    print(report_table(report))
    rows = summarize(report)
    print(f"\n{'task':<30}{'model':<36}{'AUROC/C':>9}{'/oracle':>9}  95% CI")
    for r in rows:
        ratio = "" if r["over_oracle"] is None else f"{r['over_oracle']:.3f}"
        ci = "" if r["ci"][0] is None else f"  [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"
        print(f"{r['task']:<30}{r['model']:<36}{_fmt(r['value']):>9}{ratio:>9}{ci}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    result = {"n_patients": args.n_patients, "tasks": tasks, "variants": args.variants, "rows": rows,
              "timings": timings, "machine": {"cpus": os.cpu_count(), "loadavg_before": load0,
                                              "loadavg_after": os.getloadavg(), "shared": True},
              "pretrain_summary": json.loads((args.root / "pretrain" / "summary.json").read_text()),
              "finetune_summaries": {v: _finetune_summary(args.root / f"finetune_{v}")
                                     for v in args.variants.split(",")
                                     if v},
              "note": "stages found cached under --root are not re-timed: see the summaries' seconds"}
    args.output.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.output}; full report: {args.root / 'report' / 'report.md'}")
    return 0


def _finetune_summary(out: Path) -> dict[str, Any]:
    s = json.loads((out / "summary.json").read_text())
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
