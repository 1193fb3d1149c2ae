"""``ehrfm synth`` config (the generator's one config) and summary: round trips, errors naming the field,
the generated help."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ehrfm.cli import main
from ehrfm.config.base import ConfigError
from ehrfm.config.synth import SynthConfig, SynthSummary


def test_round_trip_and_old_import_paths(tmp_path: Path) -> None:
    cfg = SynthConfig(n_patients=50, seed=7, start_year=2001, years=3, gzip=True, patients_per_file=20,
                      progress=False)
    assert SynthConfig.from_dict(cfg.to_dict()) == cfg
    assert SynthConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    cfg.save(tmp_path / "s.yaml")
    assert SynthConfig.load(tmp_path / "s.yaml", ["seed=8"]) == cfg.replace(seed=8)
    assert (cfg.end - cfg.start) // 86400 == 3 * 365  # 2001-01-01 .. 2004-01-01
    import ehrfm.synth
    import ehrfm.synth.timeline

    assert ehrfm.synth.SynthConfig is SynthConfig and ehrfm.synth.timeline.SynthConfig is SynthConfig


@pytest.mark.parametrize(
    ("data", "key"),
    [({"n_patients": 0}, "n_patients"), ({"start_year": 1500}, "start_year"), ({"years": 0}, "years"),
     ({"years": 51}, "years"), ({"patients_per_file": -1}, "patients_per_file"), ({"gzip": "yes"}, "gzip"),
     ({"n_patient": 5}, "n_patient"), ({"seed": 1.5}, "seed")],
)
def test_bad_value_names_the_field(data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        SynthConfig.from_dict(data)


def test_summary_round_trip() -> None:
    s = SynthSummary(config=SynthConfig(n_patients=3), output="o", truth="o/truth/index_events.parquet",
                     deaths=1, in_hospital_deaths=0, encounters={"AMB": 4}, resources={"Patient": 3},
                     tasks={"readmission_30d": {"index_events": 2, "prevalence": 0.5}}, seconds=0.1)
    assert SynthSummary.from_dict(yaml.safe_load(s.to_yaml())) == s


def test_help_lists_the_fields_with_their_docstrings(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["synth", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--n_patients", "--seed", "--start_year", "--years", "--gzip", "--patients_per_file",
                 "--progress", "--root", "--synthetic"):
        assert flag in text, flag
    for doc in ("Number of patients.", "patient i depends only on (seed, i)",
                "First calendar year of the record", "Write .ndjson.gz files",
                "of this many patients, like a FHIR bulk export", "Show a progress bar"):
        assert doc in text, doc
