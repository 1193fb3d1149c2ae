"""The etl/ jobs run under a real ``spark-submit`` (its --master and --conf are kept) on a tiny MIMIC
subset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ehrfm.ingest.validate import validate_meds_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _mimic_subset(src: Path, dst: Path, n_subjects: int = 3) -> list[int]:
    """Copy patients/admissions/diagnoses_icd/labevents of the first subjects (gzip CSV, as shipped)."""
    patients = pd.read_csv(src / "hosp" / "patients.csv.gz", dtype=str)
    keep = sorted(patients.subject_id)[:n_subjects]
    (dst / "hosp").mkdir(parents=True)
    for table in ("patients", "admissions", "diagnoses_icd", "labevents"):
        df = pd.read_csv(src / "hosp" / f"{table}.csv.gz", dtype=str, keep_default_na=False)
        df[df.subject_id.isin(keep)].to_csv(dst / "hosp" / f"{table}.csv.gz", index=False, compression="gzip")
    return [int(k) for k in keep]


def test_spark_submit_ingest_mimic(mimic_demo: Path, tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    spark_submit = bindir / "spark-submit"
    assert spark_submit.exists(), f"spark-submit not found beside {sys.executable}"
    subjects = _mimic_subset(mimic_demo, tmp_path / "mimic")
    out = tmp_path / "out"
    env = {
        **os.environ,
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",  # spark-submit needs the venv's bin/
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    cmd = [
        str(spark_submit), "--master", "local[2]", "--conf", "spark.sql.shuffle.partitions=2",
        "--conf", "spark.ui.enabled=false", str(REPO / "etl" / "ingest_mimic.py"),
        "--input", str(tmp_path / "mimic"), "--meds", str(out), "--split_ratios", "[0.34,0.33,0.33]",
    ]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "events" in proc.stdout and "subjects 3" in proc.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["subjects"] == len(subjects) and summary["split_ratios"] == [0.34, 0.33, 0.33]
    assert summary["spark_master"] == "local[2]"  # get_spark kept spark-submit's master
    assert summary["tables"]["transfers"]["absent"]  # optional tables may be missing
    report = validate_meds_dataset(str(out))
    assert report.subjects == len(subjects) and report.events == summary["events"] > 0
