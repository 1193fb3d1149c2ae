"""Real data, whole path: the two real datasets in ../shared/data go through ``ehrfm demo`` (Spark ingest ->
labels -> vocabulary/bins -> tokens -> pretrain -> multitask finetune -> evaluate with baselines ->
register ->
served prediction) with a few training steps, and the evaluation report shows every task it could label with
the model and the count baselines side by side, each AUROC with its 95% bootstrap CI (wide on these tiny
cohorts, and visibly so) or a named reason why the metric is undefined.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ehrfm.cli import main

BINARY = ("readmission_30d", "mortality_inhospital", "mortality_30d_post_discharge", "los_gt_7d")
STEPS = ["--pretrain_steps", "8", "--finetune_steps", "8", "--bootstrap", "40", "--max_len", "256"]


def _check_report(out: Path) -> dict:
    rep = json.loads((out / "evaluation" / "report.json").read_text())
    md = (out / "evaluation" / "report.md").read_text()
    summary = json.loads((out / "demo_summary.json").read_text())
    statuses = [r["status"] for r in summary["steps"]]
    assert summary["ok"] and statuses == ["ok"] * len(statuses), summary
    tasks = rep["tasks"]
    assert set(BINARY) & set(tasks), f"no binary task was evaluated: {sorted(tasks)}"
    finetuned = json.loads((out / "runs" / "finetune" / "summary.json").read_text())
    model = finetuned["model_name"]
    for task in set(BINARY) & set(tasks):
        models = tasks[task]["models"]
        assert {model, "baseline_lr", "baseline_hgb"} <= set(models), (task, sorted(models))
        for name in (model, "baseline_lr"):
            m = models[name]
            assert m["n"] == tasks[task]["n_eval"] > 0
            auroc = m["metrics"]["auroc"]
            if auroc.get("value") is None:  # one class in the held-out split: named, not a crash or a 0.5
                assert auroc.get("reason"), (task, name, auroc)
            else:
                assert auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"], (task, name, auroc)
        assert f"| {model} |" in md and "| baseline_lr |" in md
    return rep


@pytest.mark.slow
def test_demo_path_on_mimic_iv_demo(mimic_demo: Path, spark: object, tmp_path: Path) -> None:
    out = tmp_path / "mimic"
    assert main(["demo", "--mimic", str(mimic_demo), "--root", str(out), *STEPS]) == 0
    rep = _check_report(out)
    # 100 subjects, ~12 held out: whatever AUROCs came out, their CIs are wide, not a false precision (a
    # constant predictor has AUROC 0.5 in every resample: width 0, which is why this is the median)
    widths = sorted(m["metrics"]["auroc"]["ci_high"] - m["metrics"]["auroc"]["ci_low"]
                    for t in BINARY if t in rep["tasks"] for m in rep["tasks"][t]["models"].values()
                    if m["metrics"]["auroc"].get("value") is not None)
    assert widths and widths[len(widths) // 2] > 0.2, widths


@pytest.mark.slow
def test_demo_path_on_synthea_fhir(synthea_bundles: Path, spark: object, tmp_path: Path) -> None:
    out = tmp_path / "synthea"
    assert main(["demo", "--fhir", f"[{synthea_bundles}]", "--root", str(out), *STEPS]) == 0
    rep = _check_report(out)
    assert "death_1y_tte" in rep["tasks"]
    cox = rep["tasks"]["death_1y_tte"]["models"]["baseline_cox"]["metrics"]
    assert {"harrell_c", "uno_c", "ibs"} <= set(cox)
