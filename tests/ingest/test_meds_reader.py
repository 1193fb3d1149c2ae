"""meds_reader, a MEDS client, on our MIMIC-IV demo output unchanged: ``meds_reader_convert`` builds its
database, ``meds_reader_verify`` passes, and ``meds_reader.SubjectDatabase`` reads back every subject with
as many events as we wrote (and the same codes). The output is the session's one MIMIC demo ingest
(``mimic_demo_ingested``, tests/ingest/conftest.py); the ``meds`` schemas are checked on it too."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers.meds_valid import assert_meds_valid

pytestmark = [pytest.mark.spark, pytest.mark.slow]
BIN = Path(sys.executable).parent  # the venv's console scripts (meds_reader is in the dev extra)
Ingested = tuple[Path, dict[str, Any], pd.DataFrame]  # (MEDS folder, ingest summary, events)


@pytest.fixture(scope="module")
def reader_db(mimic_demo_ingested: Ingested,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    meds_root = mimic_demo_ingested[0]
    db = tmp_path_factory.mktemp("meds_reader") / "db"
    subprocess.run([str(BIN / "meds_reader_convert"), "--num_threads", "1", str(meds_root), str(db)],
                   check=True, capture_output=True, timeout=600)
    return db


def test_our_output_is_valid_under_the_meds_schemas(
        mimic_demo_ingested: Ingested) -> None:
    meds_root, _, events = mimic_demo_ingested
    counts = assert_meds_valid(meds_root)
    assert counts["subjects"] == events["subject_id"].nunique() == 100
    assert counts["events"] == len(events)


def test_meds_reader_verify_accepts_the_converted_database(
        mimic_demo_ingested: Ingested, reader_db: Path) -> None:
    out = subprocess.run([str(BIN / "meds_reader_verify"), str(mimic_demo_ingested[0]), str(reader_db)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0 and "Test passed" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


def test_subject_database_reads_back_every_subject_and_event(
        mimic_demo_ingested: Ingested, reader_db: Path) -> None:
    import meds_reader

    _, _, events = mimic_demo_ingested
    ours = events.groupby("subject_id").size().to_dict()
    db = meds_reader.SubjectDatabase(str(reader_db), num_threads=1)
    try:
        theirs = {int(sid): len(db[sid].events) for sid in db}
        assert len(db) == len(ours) == 100
        assert theirs == ours  # per-subject event counts
        # and the same codes per subject, static rows included (time null)
        sid = max(ours, key=ours.__getitem__)
        mine = events[events.subject_id == sid]
        assert Counter(e.code for e in db[sid].events) == Counter(mine["code"])
        assert sum(e.time is None for e in db[sid].events) == int(mine["time"].isna().sum()) > 0
    finally:
        db.terminate()
