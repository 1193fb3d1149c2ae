"""build_report and the ``ehrfm evaluate`` CLI: contents (keys, side-by-side rows, oracle, files)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import Synth

from ehrfm.cli import main
from ehrfm.evaluate import BaselineConfig, ReportConfig, build_report
from ehrfm.evaluate.data import validate_predictions


def _model_predictions(s: Synth) -> pd.DataFrame:
    """A fake 'model': the true probability with noise (binary), a risk-ordered survival curve (TTE), and
    a fixed forecast; for every split so the tuning split can set thresholds."""
    splits = pd.read_parquet(s.meds / "metadata" / "subject_splits.parquet")
    rng = np.random.default_rng(1)
    t = s.truth_df.merge(splits, on="subject_id")
    grid = [10.0, 30.0, 60.0, 120.0]
    risk = np.clip(t["true_prob"].to_numpy() + rng.normal(0, 0.1, len(t)), 0.01, 0.99)
    surv = [list(np.exp(-np.array(grid) * r / 50)) for r in risk]
    common = t[["subject_id", "prediction_time", "split"]].assign(model="ehrfm-test")
    return pd.concat(
        [
            common.assign(task="readmission", prob=risk),
            common.assign(task="death_tte", survival=surv, times_days=[grid] * len(t)),
            common.assign(task="next_dx", topk_codes=[[f"DIAGNOSIS//ICD//10//C{i}" for i in range(10)]] * len(t)),
        ],
        ignore_index=True,
    )


@pytest.fixture(scope="module")
def report(synth: Synth, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("report")
    rep = build_report(
        _model_predictions(synth), synth.labels, synth.meds, None, out, ["lr", "hgb", "cox", "rsf"], synth.truth,
        ReportConfig(n_boot=20), BaselineConfig(rsf_trees=10, hgb_max_iter=50), progress=False,
    )
    return rep, out


def test_report_side_by_side_and_keys(report: tuple[dict, Path]) -> None:
    rep, out = report
    tasks = rep["tasks"]
    assert set(tasks) == {"readmission", "death_tte", "next_dx"}
    assert set(tasks["readmission"]["models"]) == {"ehrfm-test", "baseline_lr", "baseline_hgb"}
    assert set(tasks["death_tte"]["models"]) == {"ehrfm-test", "baseline_cox", "baseline_rsf"}
    assert set(tasks["next_dx"]["models"]) == {"ehrfm-test", "baseline_freq"}
    m = tasks["readmission"]["models"]["ehrfm-test"]
    assert set(m["metrics"]) >= {"auroc", "auprc", "prevalence", "brier", "ece", "sensitivity", "specificity", "ppv", "f1"}
    assert m["threshold_source"] == "tuning (youden)" and m["n"] == tasks["readmission"]["n_eval"]
    assert m["metrics"]["auroc"]["ci_low"] <= m["metrics"]["auroc"]["value"] <= m["metrics"]["auroc"]["ci_high"]
    assert set(tasks["death_tte"]["models"]["baseline_cox"]["metrics"]) >= {"harrell_c", "uno_c", "mean_auc", "ibs"}
    assert set(tasks["next_dx"]["models"]["baseline_freq"]["metrics"]) == {"precision@10", "recall@10"}
    # oracle: true_prob vs labels, and model / oracle ratio
    o = tasks["readmission"]["oracle"]["auroc"]["value"]
    assert 0.7 < o < 0.95
    assert m["auroc_over_oracle"] == pytest.approx(m["metrics"]["auroc"]["value"] / o)
    groups = {(r["attribute"], r["group"]) for r in tasks["readmission"]["subgroups"]}
    assert {("sex", "F"), ("sex", "M"), ("race", "WHITE"), ("insurance", "MEDICARE")} <= groups
    assert all(set(r["metrics"]) == set(tasks["readmission"]["models"]) for r in tasks["readmission"]["subgroups"])
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(rep, default=str))


def test_paired_auroc_difference_vs_baselines(report: tuple[dict, Path]) -> None:
    rep, out = report
    rows = {(d["model"], d["baseline"]): d for d in rep["tasks"]["readmission"]["vs_baselines"]}
    assert set(rows) == {("ehrfm-test", "baseline_lr"), ("ehrfm-test", "baseline_hgb")}
    models = rep["tasks"]["readmission"]["models"]
    for (model, base), d in rows.items():
        delta = d["delta_auroc"]
        # every model predicted every held-out row: the difference is the difference of the table's AUROCs
        assert d["n"] == rep["tasks"]["readmission"]["n_eval"]
        want = models[model]["metrics"]["auroc"]["value"] - models[base]["metrics"]["auroc"]["value"]
        assert delta["value"] == pytest.approx(want)
        assert delta["ci_low"] <= delta["value"] <= delta["ci_high"]
    assert "vs_baselines" not in rep["tasks"]["death_tte"]
    assert "ehrfm-test − baseline_lr" in (out / "report.md").read_text()


def test_paired_auroc_by_hand() -> None:
    from ehrfm.evaluate.report import ReportConfig, _paired_auroc

    labels = pd.DataFrame({"subject_id": [1, 2, 3, 4, 5, 6], "boolean_value": [0, 0, 1, 1, 0, 1]})
    raw = {"m": {"_rows": np.array([0, 1, 2, 3, 4, 5]), "_p": np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7])},  # AUROC 1
           "baseline_x": {"_rows": np.array([0, 2, 3, 4, 5]), "_p": np.array([0.5, 0.4, 0.6, 0.7, 0.2])}}  # row 1 missing
    (d,) = _paired_auroc(raw, labels, ReportConfig(n_boot=0))
    # on the 5 shared rows: baseline ranks positives (2: 0.4, 3: 0.6, 5: 0.2) vs negatives (0: 0.5, 4: 0.7):
    # pairs won 1 of 6 -> AUROC 1/6; the model's AUROC there is 1
    assert d["n"] == 5 and d["delta_auroc"]["value"] == pytest.approx(1 - 1 / 6)


def test_report_files_and_markdown(report: tuple[dict, Path]) -> None:
    _, out = report
    md = (out / "report.md").read_text()
    for row in ("| ehrfm-test |", "| baseline_lr |", "| baseline_hgb |", "| baseline_cox |", "| baseline_rsf |",
                "| baseline_freq |", "**oracle (true_prob)**", "### Subgroups (auroc)", "prevalence"):
        assert row in md
    for png in ("readmission_reliability.png", "readmission_roc.png", "death_tte_km.png"):
        p = out / "plots" / png
        assert p.exists() and p.read_bytes()[:4] == b"\x89PNG" and f"plots/{png}" in md
    base = pd.read_parquet(out / "baseline_predictions.parquet")
    assert set(base["split"]) == {"train", "tuning", "held_out"}


def test_cli_baselines_only(synth: Synth, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", "--labels", str(synth.labels), "--meds", str(synth.meds), "--output", str(tmp_path),
               "--tasks", "readmission", "--baselines", "lr", "--bootstrap", "5", "--no-progress"])
    assert rc == 0
    assert "baseline_lr" in capsys.readouterr().out
    rep = json.loads((tmp_path / "report.json").read_text())
    assert list(rep["tasks"]) == ["readmission"] and rep["config"]["n_boot"] == 5
    assert rep["prediction_tasks_without_labels"] == []


def test_bad_predictions_are_named() -> None:
    ok = pd.DataFrame({"subject_id": [1, 1], "prediction_time": ["2020-01-01"] * 2, "task": "t", "split": "held_out",
                       "model": "m", "prob": [0.1, 0.2]})
    with pytest.raises(ValueError, match="duplicate row for model 'm', task 't', subject_id 1"):
        validate_predictions(ok)
    with pytest.raises(ValueError, match="missing required column 'model'"):
        validate_predictions(ok.drop(columns="model"))
    with pytest.raises(ValueError, match="'survival' needs 'times_days'"):
        validate_predictions(ok.drop(columns="prob").assign(survival=[[1.0], [1.0]], subject_id=[1, 2]))
