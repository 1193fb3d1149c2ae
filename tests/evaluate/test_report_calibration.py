"""The report of a calibrated model (predictions with ``prob_raw``): Brier and ECE before and after
calibration with CIs, per subgroup too, reliability diagrams with both curves and one panel per subgroup,
and the Markdown tables; an uncalibrated model's report has none of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from conftest import Synth

from ehrfm.evaluate import ReportConfig, build_report
from ehrfm.layout import MedsPaths

CONFIG = ReportConfig(n_boot=20, subgroup_min_n=10)


def _predictions(s: Synth, calibrated: bool) -> pd.DataFrame:
    """``prob`` = the true risk with a little noise; ``prob_raw`` = the same score made overconfident and
    too high (a monotone distortion: AUROC equal, calibration worse)."""
    splits = pd.read_parquet(MedsPaths(s.meds).subject_splits)
    t = s.truth_df[s.truth_df["task"] == "readmission"].merge(splits, on="subject_id")
    rng = np.random.default_rng(2)
    p = np.clip(t["true_prob"].to_numpy() + rng.normal(0, 0.03, len(t)), 0.01, 0.99)
    raw = 1 / (1 + np.exp(-(2.5 * np.log(p / (1 - p)) + 1.5)))
    out: Any = t[["subject_id", "prediction_time", "split"]].assign(model="ehrfm-cal", task="readmission",
                                                                     prob=p)
    return out.assign(prob_raw=raw) if calibrated else out


@pytest.mark.parametrize("calibrated", [True, False])
def test_report_shows_calibration_before_and_after(synth: Synth, tmp_path: Path, calibrated: bool) -> None:
    rep = build_report(_predictions(synth, calibrated), synth.labels, synth.meds, ["readmission"], tmp_path,
                       [], None, CONFIG, progress=False)
    res = rep.tasks["readmission"]
    met = res.models["ehrfm-cal"].metrics
    md = (tmp_path / "report.md").read_text()
    sub_plots = [p for p in res.plots if "_reliability_" in p]
    if not calibrated:
        assert "ece_raw" not in met and not sub_plots and "before cal." not in md
        return
    assert met["ece_raw"].value > met["ece"].value + 0.02 and met["brier_raw"].value > met["brier"].value
    assert met["ece_raw"].ci_low <= met["ece_raw"].value <= met["ece_raw"].ci_high
    rows = [r for r in res.subgroups if not r.tiny]
    assert rows and all({"ece", "ece_raw", "brier", "brier_raw"} <= set(r.metrics["ehrfm-cal"]) for r in rows)
    assert {"plots/readmission_reliability_ehrfm-cal_sex.png",
            "plots/readmission_reliability_ehrfm-cal_age_band.png"} <= set(sub_plots)
    assert all((tmp_path / p).stat().st_size > 1000 for p in res.plots)
    assert "ECE before cal." in md and "### Subgroup calibration (before → after)" in md
