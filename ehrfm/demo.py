"""``ehrfm demo``: the end-to-end pipeline on the embedded defaults, ``run(DemoConfig, Layout) ->
DemoSummary``.

synthetic FHIR population -> Spark ingest -> labels -> vocabulary/bins -> tokens -> tiny pretrain -> multitask
finetuning -> evaluation with supervised baselines -> MLflow registry -> one served prediction. The steps are
:func:`ehrfm.pipeline.pipeline_steps` (the notebooks run the same ones), each run through the same stage
runner
``ehrfm <stage>`` uses; a summary table is printed at the end. Real data: ``--fhir <bundles>`` or ``--mimic
<MIMIC-IV root>`` replaces the synthetic population.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import traceback
from collections.abc import Callable

from ehrfm.config.demo import DemoConfig, DemoStep, DemoSummary
from ehrfm.layout import Layout


def _served(layout: Layout) -> None:
    """Score one held-out patient through the registered pyfunc and print what a client receives."""
    import pandas as pd

    from ehrfm.serve.example import served_prediction

    out = served_prediction("models:/ehrfm@champion", layout.meds_paths.root)
    cols = [c for c in ("subject_id", "prediction_time", "task", "prob", "risk", "topk_codes") if c in out]
    with pd.option_context("display.width", 160, "display.max_colwidth", 60):
        print(out[cols].to_string(index=False))
    if "risk_assessment" in out and len(out):
        print("\nFHIR RiskAssessment (first task):\n" + str(out["risk_assessment"].iloc[0])[:600])


def _step(title: str, fn: Callable[[], object], log: list[DemoStep]) -> bool:
    print(f"\n=== {title} ===", flush=True)
    t0 = time.perf_counter()
    try:
        fn()
        status = "ok"
    except Exception as exc:  # a failed step ends the demo with its error; the summary still prints
        traceback.print_exc()
        status = f"failed ({type(exc).__name__}: {exc})"
    log.append(DemoStep(step=title, seconds=round(time.perf_counter() - t0, 1), status=status))
    return status == "ok"


def run(cfg: DemoConfig, layout: Layout) -> DemoSummary:
    """Run the pipeline as far as it goes; print a summary table; ``ok`` is False after a failed step."""
    from ehrfm.cli import run_stage
    from ehrfm.pipeline import pipeline_steps

    root = layout.root_dir.resolve()
    if cfg.fresh and root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    layout = layout.replace(root=str(root))
    # One MLflow store for every stage, artifacts beside it (never ./mlruns).
    os.environ.setdefault("MLFLOW_TRACKING_URI", layout.tracking_uri())
    from ehrfm.tracking import Tracker

    Tracker(root)  # creates the "ehrfm" experiment with artifact_location <root>/mlartifacts
    log: list[DemoStep] = []
    ok = True
    for step in pipeline_steps(cfg):
        if not _step(step.title, lambda s=step: run_stage(s.stage, s.config, layout), log):  # type: ignore[misc]
            ok = False
            break
    if ok and cfg.register and cfg.finetune_steps > 0:
        ok = _step("served prediction (models:/ehrfm@champion)", lambda: _served(layout), log)
    report = layout.evaluation_dir / "report.md"
    summary = DemoSummary(steps=log, ok=ok, report=str(report) if report.exists() else None)
    layout.demo_summary.write_text(json.dumps(summary.to_dict(), indent=2))
    print("\n=== demo summary ===")
    print(f"{'step':<44}{'seconds':>9}  status")
    for row in log:
        print(f"{row.step:<44}{row.seconds:>9}  {row.status}")
    print(f"\noutputs under {root}")
    if summary.report:
        print(f"evaluation report: {summary.report}")
    print(f"MLflow UI: mlflow ui --backend-store-uri {os.environ['MLFLOW_TRACKING_URI']} --workers 1")
    return summary
