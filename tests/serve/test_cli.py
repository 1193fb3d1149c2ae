"""`ehrfm register` / `ehrfm score` argument handling and their clear errors (no MLflow logging here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ehrfm.cli import build_parser, main


def test_stages_are_wired() -> None:
    parser = build_parser()
    args = parser.parse_args(["register", "--run", "x"])
    assert args._module == "ehrfm.serve.register_cli" and args.alias == "champion" and args.name == "ehrfm"
    args = parser.parse_args(["score", "--model", "models:/ehrfm@champion", "--meds", "m", "--output", "o"])
    assert args._module == "ehrfm.serve.score_cli" and args.tokens is None
    with pytest.raises(SystemExit):  # --tokens and --meds are exclusive
        parser.parse_args(["score", "--model", "m", "--meds", "a", "--tokens", "b", "--output", "o"])


def test_register_errors_name_the_problem(tmp_path: Path, serving_dir: Path) -> None:
    with pytest.raises(FileNotFoundError, match="heads.json"):
        main(["register", "--run", str(tmp_path), "--store-dir", str(tmp_path / "store")])
    no_bins = tmp_path / "model"
    shutil.copytree(serving_dir.parent / "finetuned", no_bins)
    (no_bins / "bins.json").unlink()
    with pytest.raises(FileNotFoundError, match="bins.json not found.*pass --bins or --tokens"):
        main(["register", "--run", str(no_bins), "--store-dir", str(tmp_path / "store")])
    with pytest.raises(ValueError, match="neither a folder nor a run id"):
        main(["register", "--run", "0123abc", "--store-dir", str(tmp_path / "store")])
