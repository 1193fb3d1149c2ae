"""CLI, the AUROC helper and the order-dependent risk feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ehrfm.cli import main
from ehrfm.synth import auroc, read_truth, simulate
from ehrfm.synth.risk import DischargeFeatures, readmission_prob
from ehrfm.synth.timeline import SynthConfig


def test_cli_writes_population_and_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pop"
    assert main(["synth", "--n-patients", "30", "--seed", "4", "--output", str(out), "--no-progress",
                 "--start-year", "2010", "--years", "8"]) == 0
    text = capsys.readouterr().out
    assert "patients 30" in text and "readmission_30d" in text and "Observation" in text
    assert (out / "Patient.ndjson").read_text().count("\n") == 30
    assert "2018-01-01" not in (out / "Encounter.ndjson").read_text()  # record ends at 2018-01-01
    assert (out / "truth" / "summary.yaml").exists()
    read_truth(out)


def test_cli_config_file_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "synth.yaml"
    cfg.write_text("n_patients: 12\nseed: 2\ngzip: true\n")
    assert main(["synth", "--config", str(cfg), "--output", str(tmp_path / "p"), "--no-progress"]) == 0
    assert (tmp_path / "p" / "Patient.ndjson.gz").exists()
    cfg.write_text("n_patient: 12\n")
    assert main(["synth", "--config", str(cfg), "--output", str(tmp_path / "q"), "--no-progress"]) == 2
    assert "n_patient" in capsys.readouterr().err
    assert main(["synth", "--n-patients", "0", "--output", str(tmp_path / "r"), "--no-progress"]) == 2
    with pytest.raises(ValueError, match="start_year"):
        SynthConfig(start_year=1500)


def test_auroc_matches_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # rounded: many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(auroc(np.zeros(5), np.arange(5.0)))


def test_readmission_risk_depends_on_the_order_of_creatinine() -> None:
    base = dict(age=70.0, chronic=frozenset({"hf"}), prior_admissions_1y=0, los_days=4.0, diagnosis="pneumonia")
    rising = readmission_prob(DischargeFeatures(creatinine_last3=(1.0, 1.3, 1.6), **base))  # type: ignore[arg-type]
    falling = readmission_prob(DischargeFeatures(creatinine_last3=(1.6, 1.3, 1.0), **base))  # type: ignore[arg-type]
    assert rising > 2.5 * falling  # same values, same mean and count, opposite order


def test_patient_depends_only_on_seed_and_index() -> None:
    cfg = SynthConfig()
    assert simulate(3, 17, cfg) == simulate(3, 17, cfg)
    assert simulate(3, 17, cfg) != simulate(3, 18, cfg)
    assert simulate(3, 17, cfg).id == "18"
