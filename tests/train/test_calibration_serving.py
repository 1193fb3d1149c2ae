"""A calibration saved in a finetuned model folder reaches every consumer: ``build_serving_dir`` copies
``calibration.json``, the serving :class:`Scorer` returns the calibrated risks (predict_batch applies them),
and removing the file gives the raw ones back."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pandas as pd
from helpers.tiny_model import tiny_finetuned

from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.serve.core import Scorer, build_serving_dir
from ehrfm.train.calibration import CALIBRATION_FILE, Calibration, ProbMap, TaskCalibration


def test_serving_folder_carries_and_applies_the_calibration(synthea_bundles: Path, tmp_path: Path) -> None:
    patients = []
    for path in sorted(synthea_bundles.glob("*.json.gz"), key=lambda p: p.stat().st_size):
        with gzip.open(path) as fh:
            ev = bundle_to_events(fh.read().decode("utf-8"), validate="none").events_df()
        if ev["time"].notna().sum() > 20:  # patient bundles, not organisation files
            patients.append(ev)
        if len(patients) == 4:
            break
    events = patients[0]
    ft = tiny_finetuned(pd.concat(patients, ignore_index=True), tmp_path / "finetuned")
    raw = Scorer(build_serving_dir(ft, tmp_path / "raw")).score_events(events)
    cal = Calibration({
        "readmission_30d": TaskCalibration("readmission_30d", "binary", [ProbMap("platt", a=0.5, b=-1.0)]),
        "death_1y_tte": TaskCalibration("death_1y_tte", "tte", [ProbMap("platt", a=1.0, b=-2.0)] * 4),
        "next_visit_codes": TaskCalibration("next_visit_codes", "forecast", temperature=3.0)})
    cal.save(ft)
    served_dir = build_serving_dir(ft, tmp_path / "served")
    assert (served_dir / CALIBRATION_FILE).exists()
    got = {r["task"]: r for r in Scorer(served_dir).score_events(events)}
    before = {r["task"]: r for r in raw}
    p_raw = before["readmission_30d"]["prob"]
    assert got["readmission_30d"]["prob"] == ProbMap("platt", a=0.5, b=-1.0)(np.array([p_raw]))[0]
    assert "prob_raw" not in got["readmission_30d"]  # serving returns the contract columns only
    s_raw = np.asarray(before["death_1y_tte"]["survival"])
    s_cal = np.asarray(got["death_1y_tte"]["survival"])
    assert np.all(s_cal[1:] > s_raw[1:]) and np.all(np.diff(s_cal) <= 0)  # b = -2: lower event risk
    assert got["death_1y_tte"]["risk"] == 1 - s_cal[-1]
    fc_raw, fc_cal = before["next_visit_codes"], got["next_visit_codes"]
    assert fc_cal["topk_codes"] == fc_raw["topk_codes"]  # temperature keeps the ranking
    assert len(fc_raw["topk_probs"]) > 1 and fc_raw["topk_probs"][1] > 0
    assert fc_cal["topk_probs"][0] < fc_raw["topk_probs"][0]  # and flattens the distribution
    assert pd.Series(fc_cal["topk_probs"]).is_monotonic_decreasing
