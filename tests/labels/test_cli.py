"""``ehrfm label`` end to end on a small hand-made MEDS dataset, and its clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ehrfm.cli import main
from ehrfm.labels.direct import read_labels

from .timelines import random_population, write_meds


def test_unknown_task_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_meds(random_population(3), tmp_path / "meds")
    rc = main(["label", "--meds", str(tmp_path / "meds"), "--tasks", "nope", "--output", str(tmp_path / "o")])
    assert rc == 2 and "unknown task 'nope'" in capsys.readouterr().err


def test_missing_meds_dir_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["label", "--meds", str(tmp_path / "none"), "--output", str(tmp_path / "o")])
    assert rc == 2 and "no data/ folder" in capsys.readouterr().err


@pytest.mark.spark
def test_cli_writes_tables_and_summary(spark: object, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_meds(random_population(20, seed=1), tmp_path / "meds")
    out = tmp_path / "labels"
    rc = main(["label", "--meds", str(tmp_path / "meds"), "--tasks", "readmission_30d", "--output", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "readmission_30d" in text and "prevalence" in text
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["task"]: r["rows"] for r in summary if r["split"] == "all"}
    assert rows == {"readmission_30d": read_labels(out / "readmission_30d.parquet").num_rows}
    assert min(rows.values()) > 0


def test_spark_submit_job_has_the_cli_options() -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(repo / "etl" / "label.py"), "--help"], capture_output=True, text=True,
                         check=True, cwd=repo)
    assert "--meds" in out.stdout and "--tasks-dir" in out.stdout
