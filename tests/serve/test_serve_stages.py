"""`ehrfm register` / `ehrfm score` argument handling and their clear errors (no MLflow logging here)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from ehrfm.cli import build_parser, main


def test_stages_are_wired() -> None:
    from ehrfm.cli import split_namespace, stage
    from ehrfm.config.serve import RegisterConfig, ScoreConfig

    parser = build_parser()
    ns = parser.parse_args(["register", "--run", "x"])
    cfg, _ = split_namespace(stage("register"), ns["register"].as_dict())
    assert isinstance(cfg,
                      RegisterConfig) and cfg.alias == "champion" and cfg.name == "ehrfm" and cfg.run == "x"
    ns = parser.parse_args(["score", "--model", "models:/ehrfm@champion", "--source", "meds", "--meds", "m"])
    cfg, layout = split_namespace(stage("score"), ns["score"].as_dict())
    assert isinstance(cfg, ScoreConfig) and cfg.source == "meds" and layout.meds == "m"
    ns = parser.parse_args(["score", "--source", "fhir", "--input", "bundles", "--rejects", "rej"])
    cfg, _ = split_namespace(stage("score"), ns["score"].as_dict())
    assert isinstance(cfg, ScoreConfig) and (cfg.source, cfg.input, cfg.rejects) == ("fhir", "bundles", "rej")
    with pytest.raises(SystemExit):  # the source is tokens, meds or fhir
        parser.parse_args(["score", "--source", "labels"])
    assert main(["score", "--source", "tokens", "--prediction_time", "2020-01-01"]) == 2  # meds/fhir only
    assert main(["score", "--source", "fhir"]) == 2  # needs --input
    assert main(["score", "--input", "bundles"]) == 2  # only with fhir


def test_register_errors_name_the_problem(tmp_path: Path, serving_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["register", "--run", str(tmp_path), "--root", str(tmp_path / "store")]) == 2
    assert "heads.json" in capsys.readouterr().err
    no_bins = tmp_path / "model"
    shutil.copytree(serving_dir.parent / "finetuned", no_bins)
    (no_bins / "bins.json").unlink()
    assert main(["register", "--run", str(no_bins), "--root", str(tmp_path / "store")]) == 2
    assert re.search("bins.json not found.*--tokens", capsys.readouterr().err)
    with pytest.raises(ValueError, match="neither a folder nor a run id"):
        main(["register", "--run", "0123abc", "--root", str(tmp_path / "store")])
