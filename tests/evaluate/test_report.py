"""build_report, the ``ehrfm evaluate`` stage and its CLI: contents (keys, side-by-side rows, oracle, files),
the typed results, and the config (round trips, not modified by the report)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pytest
from conftest import Synth

from ehrfm.cli import main
from ehrfm.config.evaluate import EvaluateConfig, EvaluateSummary
from ehrfm.evaluate import BaselineConfig, Report, ReportConfig, build_report
from ehrfm.evaluate.data import validate_predictions
from ehrfm.evaluate.report import _json_default
from ehrfm.evaluate.stage import run
from ehrfm.layout import Layout, MedsPaths


def _model_predictions(s: Synth) -> pd.DataFrame:
    """A fake 'model': the true probability with noise (binary), a risk-ordered survival curve (TTE), and
    a fixed forecast; for every split so the tuning split can set thresholds."""
    splits = pd.read_parquet(MedsPaths(s.meds).subject_splits)
    rng = np.random.default_rng(1)
    t = s.truth_df.merge(splits, on="subject_id")
    grid = [10.0, 30.0, 60.0, 120.0]
    risk = np.clip(t["true_prob"].to_numpy() + rng.normal(0, 0.1, len(t)), 0.01, 0.99)
    surv = [list(np.exp(-np.array(grid) * r / 50)) for r in risk]
    common: Any = t[["subject_id", "prediction_time", "split"]].assign(model="ehrfm-test")
    frames = [
        common.assign(task="readmission", prob=risk),
        common.assign(task="death_tte", survival=surv, times_days=[grid] * len(t)),
        common.assign(task="next_dx", topk_codes=[[f"DIAGNOSIS//ICD//10//C{i}" for i in range(10)]] * len(t)),
    ]
    return cast(pd.DataFrame, pd.concat(frames, ignore_index=True))


CONFIG = ReportConfig(n_boot=20)


@pytest.fixture(scope="module")
def built(synth: Synth, tmp_path_factory: pytest.TempPathFactory) -> tuple[Report, Path]:
    out = tmp_path_factory.mktemp("report")
    rep = build_report(
        _model_predictions(synth), synth.labels, synth.meds, None, out, ["lr", "hgb", "cox", "rsf"],
        synth.truth, CONFIG, BaselineConfig(rsf_trees=10, hgb_max_iter=50), progress=False,
    )
    return rep, out


@pytest.fixture(scope="module")
def report(built: tuple[Report, Path]) -> tuple[dict[str, Any], Path]:
    """The report as written to report.json."""
    return built[0].to_dict(), built[1]


def test_report_side_by_side_and_keys(report: tuple[dict[str, Any], Path]) -> None:
    rep, out = report
    tasks = rep["tasks"]
    assert set(tasks) == {"readmission", "death_tte", "next_dx"}
    assert set(tasks["readmission"]["models"]) == {"ehrfm-test", "baseline_lr", "baseline_hgb"}
    assert set(tasks["death_tte"]["models"]) == {"ehrfm-test", "baseline_cox", "baseline_rsf"}
    assert set(tasks["next_dx"]["models"]) == {"ehrfm-test", "baseline_freq"}
    m = tasks["readmission"]["models"]["ehrfm-test"]
    assert set(m["metrics"]) >= {"auroc", "auprc", "prevalence", "brier", "ece", "sensitivity", "specificity",
                                 "ppv", "f1"}
    assert m["threshold_source"] == "tuning (youden)" and m["n"] == tasks["readmission"]["n_eval"]
    auroc = m["metrics"]["auroc"]
    assert auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"]
    assert set(tasks["death_tte"]["models"]["baseline_cox"]["metrics"]) >= {"harrell_c", "uno_c", "mean_auc",
                                                                            "ibs"}
    assert set(tasks["next_dx"]["models"]["baseline_freq"]["metrics"]) == {"precision@10", "recall@10"}
    # oracle: true_prob vs labels, and model / oracle ratio
    o = tasks["readmission"]["oracle"]["auroc"]["value"]
    assert 0.7 < o < 0.95
    assert m["auroc_over_oracle"] == pytest.approx(m["metrics"]["auroc"]["value"] / o)
    groups = {(r["attribute"], r["group"]) for r in tasks["readmission"]["subgroups"]}
    assert {("sex", "F"), ("sex", "M"), ("race", "WHITE"), ("insurance", "MEDICARE")} <= groups
    models = set(tasks["readmission"]["models"])
    assert all(set(r["metrics"]) == models for r in tasks["readmission"]["subgroups"])
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(rep, default=_json_default))


def test_typed_results_and_the_config_is_not_modified(built: tuple[Report, Path]) -> None:
    rep, _ = built
    assert CONFIG.baselines == []  # the caller's config is not modified: a copy is recorded
    assert rep.config.baselines == ["lr", "hgb", "cox", "rsf"]
    res = rep.tasks["readmission"]
    model = res.models["ehrfm-test"]
    assert res.kind == "binary" and model.n == res.n_eval and model.threshold_source == "tuning (youden)"
    assert res.oracle is not None and model.auroc_over_oracle == pytest.approx(
        model.metrics["auroc"].value / res.oracle.auroc.value)
    assert {(d.model, d.baseline) for d in res.vs_baselines or []} == {("ehrfm-test", "baseline_lr"),
                                                                       ("ehrfm-test", "baseline_hgb")}
    primary = {(p.task, p.model): p for p in rep.primary_metrics()}
    assert primary[("readmission", "ehrfm-test")].value == pytest.approx(model.metrics["auroc"].value)
    assert primary[("death_tte", "baseline_cox")].metric == "harrell_c"
    assert primary[("next_dx", "baseline_freq")].metric == "precision@10"
    assert "_curves" not in json.dumps(rep.to_dict(), default=_json_default)


def test_paired_auroc_difference_vs_baselines(report: tuple[dict[str, Any], Path]) -> None:
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
    from ehrfm.evaluate.report import ReportConfig, Scored, _paired_auroc

    labels = pd.DataFrame({"subject_id": [1, 2, 3, 4, 5, 6], "boolean_value": [0, 0, 1, 1, 0, 1]})
    scored = {"m": Scored(np.array([0, 1, 2, 3, 4, 5]), np.array([0.1, 0.2, 0.9, 0.8, 0.3, 0.7])),  # AUROC 1
              # row 1 missing
              "baseline_x": Scored(np.array([0, 2, 3, 4, 5]), np.array([0.5, 0.4, 0.6, 0.7, 0.2]))}
    (d,) = _paired_auroc(scored, labels, ReportConfig(n_boot=0))
    # on the 5 shared rows: baseline ranks positives (2: 0.4, 3: 0.6, 5: 0.2) vs negatives (0: 0.5, 4: 0.7):
    # pairs won 1 of 6 -> AUROC 1/6; the model's AUROC there is 1
    assert d.n == 5 and d.delta_auroc.value == pytest.approx(1 - 1 / 6)


def test_report_files_and_markdown(report: tuple[dict[str, Any], Path]) -> None:
    _, out = report
    md = (out / "report.md").read_text()
    for row in ("| ehrfm-test |", "| baseline_lr |", "| baseline_hgb |", "| baseline_cox |",
                "| baseline_rsf |", "| baseline_freq |", "**oracle (true_prob)**", "### Subgroups (auroc)",
                "prevalence"):
        assert row in md
    for png in ("readmission_reliability.png", "readmission_roc.png", "death_tte_km.png"):
        p = out / "plots" / png
        assert p.exists() and p.read_bytes()[:4] == b"\x89PNG" and f"plots/{png}" in md
    base = pd.read_parquet(out / "baseline_predictions.parquet")
    assert set(base["split"]) == {"train", "tuning", "held_out"}


def test_cli_baselines_only(synth: Synth, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["evaluate", "--root", str(tmp_path), "--labels", str(synth.labels), "--meds", str(synth.meds),
               "--evaluation", str(tmp_path / "ev"), "--tasks", "[readmission]", "--report.baselines", "[lr]",
               "--report.n_boot", "5", "--progress", "false"])
    assert rc == 0
    assert "baseline_lr" in capsys.readouterr().out
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert list(rep["tasks"]) == ["readmission"] and rep["config"]["n_boot"] == 5
    assert rep["prediction_tasks_without_labels"] == []
    # nothing to evaluate: no finetuning predictions in this layout and no baselines
    assert main(["evaluate", "--root", str(tmp_path), "--labels", str(synth.labels),
                 "--meds", str(synth.meds)]) == 2
    assert "nothing to evaluate" in capsys.readouterr().err


def test_stage_reads_the_layout(synth: Synth, tmp_path: Path) -> None:
    layout = Layout(root=str(tmp_path), labels=str(synth.labels), meds=str(synth.meds))
    layout.finetune_run.root.mkdir(parents=True)
    _model_predictions(synth).to_parquet(layout.finetune_run.predictions)  # the finetuning run's predictions
    cfg = EvaluateConfig(tasks=["readmission"], truth=str(synth.truth), progress=False).replace(
        **{"report.n_boot": 0})
    summary = run(cfg, layout)
    assert isinstance(summary, EvaluateSummary) and summary.tasks == ["readmission"]
    assert Path(summary.report_json) == layout.evaluation_dir / "report.json"
    assert Path(summary.report_md).exists()
    assert [(p.model, p.metric) for p in summary.primary] == [("ehrfm-test", "auroc")]
    assert summary.prediction_tasks_without_labels == ["death_tte", "next_dx"]
    rep = json.loads((layout.evaluation_dir / "report.json").read_text())
    assert rep["tasks"]["readmission"]["oracle"]["n"] > 0


def test_bad_predictions_are_named() -> None:
    ok = pd.DataFrame({"subject_id": [1, 1], "prediction_time": ["2020-01-01"] * 2, "task": "t",
                       "split": "held_out", "model": "m", "prob": [0.1, 0.2]})
    with pytest.raises(ValueError, match="duplicate row for model 'm', task 't', subject_id 1"):
        validate_predictions(ok)
    with pytest.raises(ValueError, match="missing required column 'model'"):
        validate_predictions(ok.drop(columns="model"))
    with pytest.raises(ValueError, match="'survival' needs 'times_days'"):
        no_grid = ok.drop(columns="prob").assign(survival=pd.Series([[1.0], [1.0]]), subject_id=[1, 2])
        validate_predictions(no_grid)
