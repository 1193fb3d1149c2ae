"""``ehrfm label`` (the generated CLI and the etl/ job) end to end on a small hand-made MEDS dataset, and its
clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ehrfm.cli import main
from ehrfm.config.label import LabelConfig, LabelSummary
from ehrfm.labels.direct import read_labels
from ehrfm.labels.stage import run
from ehrfm.layout import Layout

from .timelines import random_population, write_meds


def test_unknown_task_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_meds(random_population(3), tmp_path / "meds")
    rc = main(["label", "--meds", str(tmp_path / "meds"), "--tasks", "[nope]",
               "--labels", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "ehrfm label: error:" in err and "unknown task 'nope'" in err
    assert not (tmp_path / "o").exists()


def test_empty_tasks_dir_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_meds(random_population(3), tmp_path / "meds")
    (tmp_path / "no_tasks").mkdir()
    rc = main(["label", "--root", str(tmp_path), "--tasks_dir", str(tmp_path / "no_tasks")])
    assert rc == 2 and "no tasks selected" in capsys.readouterr().err


def test_missing_meds_dir_is_a_clear_cli_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["label", "--root", str(tmp_path)])  # <root>/meds does not exist
    assert rc == 2 and "no data/ folder" in capsys.readouterr().err


@pytest.mark.spark
def test_cli_writes_tables_and_summary(spark: object, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    write_meds(random_population(20, seed=1), tmp_path / "meds")
    out = tmp_path / "elsewhere"
    rc = main(["label", "--meds", str(tmp_path / "meds"), "--labels", str(out),
               "--tasks", "[readmission_30d]"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "readmission_30d" in text and "prevalence" in text
    layout = Layout(labels=str(out))
    summary = json.loads(layout.label_summary.read_text())
    rows = {r["task"]: r["rows"] for r in summary if r["split"] == "all"}
    assert rows == {"readmission_30d": read_labels(layout.label_table("readmission_30d")).num_rows}
    assert json.loads(layout.label_kinds.read_text()) == {"readmission_30d": "binary"}
    assert min(rows.values()) > 0
    # the same stage from Python: the summary it returns is what the CLI saved
    again = run(LabelConfig(tasks=["readmission_30d"]),
                Layout(meds=str(tmp_path / "meds"), labels=str(tmp_path / "l2")))
    assert isinstance(again, LabelSummary) and again.tasks == {"readmission_30d": "binary"}
    assert again.rows == summary and not again.warnings
    # summary.json is the completion marker, written last: tables without it are refused, or replaced with
    # --overwrite; nothing of the staging is left behind
    layout.label_summary.unlink()
    capsys.readouterr()
    argv = ["label", "--meds", str(tmp_path / "meds"), "--labels", str(out), "--tasks", "[readmission_30d]"]
    assert main(argv) == 2 and "summary.json" in capsys.readouterr().err
    assert main([*argv, "--overwrite", "true"]) == 0
    assert json.loads(layout.label_summary.read_text()) == summary
    assert sorted(p.name for p in out.iterdir()) == ["readmission_30d.parquet", "summary.json", "tasks.json"]


def test_spark_submit_job_has_the_cli_options() -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, str(repo / "etl" / "label.py"), "--help"], capture_output=True,
                         text=True, check=True, cwd=repo)
    for flag in ("--root", "--meds", "--labels", "--tasks", "--tasks_dir", "--spark.master", "--config"):
        assert flag in out.stdout, flag


def test_engine_switch_is_validated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_meds(random_population(3), tmp_path / "meds")
    with pytest.raises(SystemExit) as stop:  # rejected by the argument parser, before any work
        main(["label", "--root", str(tmp_path), "--engine", "duckdb"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "engine" in err and "duckdb" in err
    # the choices the parser offers are the engines label_dataset runs
    assert all(name in err for name in ("auto", "spark", "reference", "local"))
    assert LabelConfig().engine == "auto" and LabelConfig(engine="reference").engine == "reference"


@pytest.mark.spark
def test_sidecars_are_staged_with_their_tables_and_tasks_json_lists_every_table(
        spark: object, tmp_path: Path) -> None:
    write_meds(random_population(20, seed=1), tmp_path / "meds")
    out = tmp_path / "labels"
    argv = ["label", "--meds", str(tmp_path / "meds"), "--labels", str(out), "--engine", "reference"]
    assert main([*argv, "--tasks", "[readmission_30d,death_1y_tte]"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "death_1y_tte.extra.parquet", "death_1y_tte.parquet", "readmission_30d.parquet", "summary.json",
        "tasks.json"]
    layout = Layout(labels=str(out))
    tte = read_labels(layout.label_table("death_1y_tte"))
    assert tte.num_rows > 0 and tte.column("duration_days").null_count == 0
    # a second run adds a table: the first run's stay, and tasks.json still names their kinds
    assert main([*argv, "--tasks", "[next_visit_codes]"]) == 0
    assert json.loads(layout.label_kinds.read_text()) == {
        "readmission_30d": "binary", "death_1y_tte": "time_to_event", "next_visit_codes": "forecast"}
    assert layout.label_tasks() == ["death_1y_tte", "next_visit_codes", "readmission_30d"]
    assert read_labels(layout.label_table("death_1y_tte")).equals(tte)
    assert layout.label_extras("next_visit_codes").exists()  # a folder of parts (a Spark engine)
