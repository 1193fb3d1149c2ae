"""``ehrfm ingest fhir`` killed with SIGKILL in its write step: the previous MEDS folder stays whole, the
rerun cleans the dead run's staging folder and writes exactly what a clean run writes.

What is compared between the rerun and the clean run: the bytes of every file whose name is deterministic
(``data/<split>/<n>.parquet``, ``metadata/codes.parquet``, ``metadata/subject_splits.parquet``,
``metadata/subject_ids.parquet``); the rows of ``rejects/`` (Spark names its part files with a random uuid);
``summary.json`` without its timings (``seconds``) and ``metadata/dataset.json`` without ``created_at``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ehrfm.atomic import STAGING_TAG, check_meds

BUNDLES = 12  # the smallest patient bundles: ~1k events, several shards at 50 events each


def _argv(inputs: Path, root: Path) -> list[str]:
    return [sys.executable, "-m", "ehrfm.cli", "ingest", "fhir", "--input", f"[{inputs}]",
            "--root", str(root), "--rows_per_shard", "50", "--max_time", "2030-01-01",
            "--spark.master", "local[1]"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYSPARK_PYTHON": sys.executable}


def _run(inputs: Path, root: Path) -> None:
    proc = subprocess.run(_argv(inputs, root), env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _wait_group_gone(pgid: int, timeout: float = 120) -> None:
    """Wait until every process of the killed run's group (the Spark JVM and its Python workers, which
    notice their driver's death on their own) has exited; kill what is left after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)


def _comparable(meds: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for rel, data in _files(meds).items():
        if rel.startswith("rejects/"):
            continue
        if rel == "summary.json":
            summary = json.loads(data)
            summary.pop("seconds", None)
            out[rel] = summary
        elif rel == "metadata/dataset.json":
            meta = json.loads(data)
            meta.pop("created_at")
            out[rel] = meta
        else:
            out[rel] = data
    rejects = pq.read_table(meds / "rejects").to_pylist()
    out["rejects rows"] = sorted(rejects, key=lambda r: json.dumps(r, sort_keys=True, default=str))
    return out


@pytest.mark.spark
@pytest.mark.slow
def test_kill_9_in_write_step_then_rerun_equals_clean_run(synthea_bundles: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    patients = sorted((p for p in synthea_bundles.glob("*.json.gz") if "Information" not in p.name),
                      key=lambda p: p.stat().st_size)[:BUNDLES]
    for p in patients:
        shutil.copy(p, inputs / p.name)

    clean = tmp_path / "clean"
    _run(inputs, clean)
    reference = _comparable(clean / "meds")
    assert sum(k.startswith("data/") for k in reference) >= 3  # several shards: a write step to kill

    # the previous output of the run to kill: a complete MEDS folder (a copy of the clean one, plus a file
    # that only the old folder has)
    root = tmp_path / "killed"
    shutil.copytree(clean / "meds", root / "meds")
    (root / "meds" / "metadata" / "previous.txt").write_text("the previous run")
    previous = _files(root / "meds")

    proc = subprocess.Popen(_argv(inputs, root), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    staging = root / f".meds{STAGING_TAG}{proc.pid}"
    shards = staging / "meds" / "data"
    try:
        deadline = time.monotonic() + 300
        while not any(shards.rglob("*.parquet")):
            assert proc.poll() is None, "the run ended before its write step could be killed"
            assert time.monotonic() < deadline, "no shard written in 300 s"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # the driver, as `kill -9` would
        proc.wait()
    finally:
        _wait_group_gone(proc.pid)
    assert proc.returncode == -signal.SIGKILL

    # killed mid-write: the staged folder is unfinished, the previous output untouched and still readable
    assert staging.is_dir() and not (staging / "meds" / "summary.json").exists()
    assert _files(root / "meds") == previous
    check_meds(root / "meds")

    _run(inputs, root)
    assert sorted(p.name for p in root.iterdir()) == ["meds"]  # the dead run's staging folder is gone
    assert not (root / "meds" / "_fhir_tmp").exists()
    assert not (root / "meds" / "metadata" / "previous.txt").exists()  # replaced as a whole
    assert _comparable(root / "meds") == reference
