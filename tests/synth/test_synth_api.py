"""CLI, the AUROC helper and the order-dependent risk feature."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ehrfm.cli import main
from ehrfm.config.base import ConfigError
from ehrfm.layout import Layout
from ehrfm.synth import SynthConfig, SynthSummary, auroc, read_truth, simulate
from ehrfm.synth.generate import SUMMARY_FILE
from ehrfm.synth.risk import DischargeFeatures, readmission_prob
from ehrfm.synth.stage import run


def test_cli_writes_population_and_prints_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["synth", "--root", str(tmp_path), "--n_patients", "30", "--seed", "4", "--progress", "false",
                 "--start_year", "2010", "--years", "8"]) == 0
    text = capsys.readouterr().out
    assert "patients 30" in text and "readmission_30d" in text and "Observation" in text
    layout = Layout(root=str(tmp_path))
    out = layout.synthetic_dir
    assert (out / "Patient.ndjson").read_text().count("\n") == 30
    assert "2018-01-01" not in (out / "Encounter.ndjson").read_text()  # record ends at 2018-01-01
    assert layout.truth.exists()
    saved = SynthSummary.load(out / SUMMARY_FILE)
    assert saved.config == SynthConfig(n_patients=30, seed=4, start_year=2010, years=8, progress=False)
    assert saved.truth == str(layout.truth) and saved.resources["Patient"] == 30
    read_truth(out)


def test_cli_config_file_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "synth.yaml"
    cfg.write_text("n_patients: 12\nseed: 2\ngzip: true\nprogress: false\n")
    assert main(["synth", "--config", str(cfg), "--synthetic", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "Patient.ndjson.gz").exists()
    cfg.write_text("n_patient: 12\n")
    with pytest.raises(SystemExit) as e:  # unknown key: jsonargparse names it
        main(["synth", "--config", str(cfg), "--synthetic", str(tmp_path / "q")])
    assert e.value.code != 0 and "n_patient" in capsys.readouterr().err
    assert main(["synth", "--n_patients", "0", "--synthetic", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "n_patients=0" in err and "must be >= 1" in err
    assert not (tmp_path / "r").exists()
    with pytest.raises(ConfigError, match="start_year"):
        SynthConfig(start_year=1500)


def test_stage_run_from_python(tmp_path: Path) -> None:
    layout = Layout(root=str(tmp_path))
    summary = run(SynthConfig(n_patients=8, seed=1, patients_per_file=5, progress=False), layout)
    assert summary.output == str(layout.synthetic_dir) and summary.truth == str(layout.truth)
    assert sorted(p.name for p in layout.synthetic_dir.glob("Patient.*")) == ["Patient.000.ndjson",
                                                                              "Patient.001.ndjson"]
    assert summary.resources["Patient"] == 8 and summary.seconds > 0
    assert SynthSummary.from_dict(summary.to_dict()) == summary


def test_auroc_matches_sklearn_with_ties() -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + y, 1)  # rounded: many ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(auroc(np.zeros(5), np.arange(5.0)))


def test_readmission_risk_depends_on_the_order_of_creatinine() -> None:
    base = dict(age=70.0, chronic=frozenset({"hf"}), prior_admissions_1y=0, los_days=4.0,
                diagnosis="pneumonia")
    rising = readmission_prob(DischargeFeatures(creatinine_last3=(1.0, 1.3, 1.6), **base))  # type: ignore[arg-type]
    falling = readmission_prob(DischargeFeatures(creatinine_last3=(1.6, 1.3, 1.0), **base))  # type: ignore[arg-type]
    assert rising > 2.5 * falling  # same values, same mean and count, opposite order


def test_patient_depends_only_on_seed_and_index() -> None:
    cfg = SynthConfig(seed=3)
    assert simulate(cfg, 17) == simulate(cfg, 17)
    assert simulate(cfg, 17) != simulate(cfg, 18)
    assert simulate(cfg, 17) == simulate(cfg.replace(n_patients=5, gzip=True), 17)  # output options only
    assert simulate(cfg, 17) != simulate(cfg.replace(seed=4), 17)
    assert simulate(cfg, 17).id == "18"
