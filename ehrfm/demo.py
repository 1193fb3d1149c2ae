"""``ehrfm demo``: the end-to-end pipeline on the embedded defaults.

synthetic FHIR population -> Spark ingest -> labels -> vocabulary/bins -> tokens -> tiny pretrain ->
evaluation with supervised baselines. Each step calls the same ``ehrfm <stage>`` entry point a user
would, so the demo exercises the real CLIs; a summary table is printed at the end. Pointing it at
real data: ``--fhir <bundles dir>`` or ``--mimic <MIMIC-IV root>`` replaces the synthetic population.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

DEFAULT_TASKS = "readmission_30d,mortality_inhospital,mortality_30d_post_discharge,los_gt_7d,death_1y_tte,next_visit_codes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ehrfm demo``."""
    parser.add_argument("--output", default="demo_out", help="working directory (default ./demo_out)")
    parser.add_argument("--n-patients", type=int, default=2000, help="synthetic population size")
    parser.add_argument("--seed", type=int, default=7)
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--fhir", help="use real FHIR R4 bundles/NDJSON (file, folder or glob) instead of synthetic data")
    src.add_argument("--mimic", help="use a MIMIC-IV hosp/icu CSV root instead of synthetic data")
    parser.add_argument("--tasks", default=DEFAULT_TASKS)
    parser.add_argument("--max-steps", type=int, default=300, help="pretraining steps")
    parser.add_argument("--finetune-steps", type=int, default=500, help="finetuning steps")
    parser.add_argument("--max-len", type=int, default=512, help="max tokens per row")
    parser.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples for the CIs")
    parser.add_argument("--fresh", action="store_true", help="delete --output first")


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _step(name: str, fn: Callable[[], int], log: list[dict[str, object]]) -> bool:
    print(f"\n=== {name} ===", flush=True)
    t0 = time.perf_counter()
    rc = fn()
    dt = time.perf_counter() - t0
    log.append({"step": name, "seconds": round(dt, 1), "status": "ok" if rc == 0 else f"failed ({rc})"})
    return rc == 0


def _served(meds: Path) -> int:
    """Score one held-out patient through the registered pyfunc and print what a client receives."""
    import pandas as pd

    from ehrfm.serve.example import served_prediction

    out = served_prediction("models:/ehrfm@champion", meds)
    cols = [c for c in ("subject_id", "prediction_time", "task", "prob", "risk", "topk_codes") if c in out]
    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        print(out[cols].to_string(index=False))
    if "risk_assessment" in out and len(out):
        print("\nFHIR RiskAssessment (first task):\n" + str(out["risk_assessment"].iloc[0])[:600])
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the pipeline as far as it goes; print a summary table; non-zero exit on a failed step."""
    from ehrfm.cli import main as ehrfm

    out = Path(args.output).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    meds, labels, tokens, runs = out / "meds", out / "labels", out / "tokens", out / "runs"
    # One MLflow store for every stage of the demo, artifacts beside it (never ./mlruns).
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{out / 'mlflow.db'}")
    from ehrfm.tracking import Tracker

    Tracker(out)  # creates the "ehrfm" experiment with artifact_location <out>/mlartifacts
    log: list[dict[str, object]] = []
    steps: list[tuple[str, Callable[[], int]]] = []
    if args.mimic:
        steps.append(("ingest (MIMIC-IV, Spark)", lambda: ehrfm(["ingest", "mimic", "--input", args.mimic, "--output", str(meds)])))
    else:
        fhir_in = args.fhir
        if not fhir_in:
            fhir_in = str(out / "synthetic")
            steps.append(("synthetic FHIR population", lambda: ehrfm(
                ["synth", "--n-patients", str(args.n_patients), "--seed", str(args.seed), "--output", fhir_in])))
        steps.append(("ingest (FHIR R4, Spark)", lambda: ehrfm(["ingest", "fhir", "--input", fhir_in, "--output", str(meds)])))
    tasks = args.tasks
    steps += [
        ("labels (Spark)", lambda: ehrfm(["label", "--meds", str(meds), "--tasks", tasks, "--output", str(labels)])),
        ("vocabulary + bins (train split)", lambda: ehrfm(["prepare", "--meds", str(meds), "--output", str(tokens), "--tasks", tasks])),
        ("tokenize (Spark)", lambda: ehrfm(["tokenize", "--meds", str(meds), "--labels", str(labels), "--output", str(tokens),
                                             "--tasks", tasks, "--max-len", str(args.max_len)])),
        ("pretrain (tiny)", lambda: ehrfm(["pretrain", "--data", str(tokens), "--output", str(runs / "pretrain"),
                                            "--set", f"trainer.max_steps={args.max_steps}"])),
    ]
    if _has("ehrfm.train.finetune_cli"):
        steps.append(("finetune (multitask prompted)", lambda: ehrfm(
            ["finetune", "--checkpoint", str(runs / "pretrain"), "--data", str(tokens), "--tasks", tasks,
             "--output", str(runs / "finetune"), "--set", f"trainer.max_steps={args.finetune_steps}"])))
    truth = [] if (args.fhir or args.mimic) else ["--truth", str(out / "synthetic" / "truth" / "index_events.parquet")]

    def _evaluate() -> int:
        preds = runs / "finetune" / "predictions.parquet"
        pred_args = ["--predictions", str(preds)] if preds.exists() else []
        return ehrfm(["evaluate", *pred_args, "--labels", str(labels), "--meds", str(meds), "--output", str(out / "evaluation"),
                      "--baselines", "lr,hgb,cox", "--bootstrap", str(args.bootstrap), *truth])

    steps.append(("evaluate (model + baselines)", _evaluate))
    if _has("ehrfm.serve.register_cli"):
        steps.append(("register (MLflow registry)", lambda: ehrfm(
            ["register", "--run", str(runs / "finetune"), "--tokens", str(tokens), "--name", "ehrfm", "--alias", "champion",
             "--store-dir", str(out)])))
        steps.append(("served prediction (models:/ehrfm@champion)", lambda: _served(meds)))
    ok = True
    for name, fn in steps:
        if not _step(name, fn, log):
            ok = False
            break
    (out / "demo_summary.json").write_text(json.dumps(log, indent=2))
    print("\n=== demo summary ===")
    print(f"{'step':<36}{'seconds':>9}  status")
    for row in log:
        print(f"{row['step']!s:<36}{row['seconds']!s:>9}  {row['status']}")
    print(f"\noutputs under {out}")
    report = out / "evaluation" / "report.md"
    if report.exists():
        print(f"evaluation report: {report}")
    print(f"MLflow UI: mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']} --workers 1")
    return 0 if ok else 1
