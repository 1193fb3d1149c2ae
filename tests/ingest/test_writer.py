"""MEDS writer and validator on a small synthetic frame: layout, ordering invariants, metadata coverage."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import meds
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm.ingest.validate import MedsValidationError, validate_meds_dataset
from ehrfm.ingest.writer import check_sorted_table
from ehrfm.prepare.splits import assign_split
from ehrfm.schema import EVENTS_SCHEMA, REJECTS_SCHEMA

SUBJECTS = [7, 3, 1000000000123, 42, 5, 11, 2, 9]


def _rows() -> list[tuple]:
    """Events in scrambled order: timed rows, ties on time, static rows, several subjects."""
    rng = random.Random(0)
    rows = []
    for sid in SUBJECTS:
        rows.append((sid, None, "GENDER//F", None, None))
        rows.append((sid, None, "RACE//X", None, None))
        for day in (3, 1, 2):
            rows.append((sid, dt.datetime(2020, 1, day, 8), "LAB//B", float(day), None))
            rows.append((sid, dt.datetime(2020, 1, day, 8), "LAB//A", None, "pos"))
    rows.append((99, dt.datetime(2021, 5, 5), "ONLY//ONE", None, None))
    rng.shuffle(rows)
    return rows


@pytest.fixture(scope="module")
def written(spark, tmp_path_factory) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    from ehrfm.ingest.writer import write_meds_dataset

    df = spark.createDataFrame(
        _rows(), "subject_id long, time timestamp, code string, numeric_value double, text_value string"
    )
    desc = spark.createDataFrame([("LAB//A", "test A"), ("UNUSED", "not in data")],
                                 "code string, description string")
    rej = spark.createDataFrame(
        [("f.csv", 3, "labevents", "x1", "charttime", "unparseable time")],
        "source_file string, record_index long, resource_type string, resource_id string, field string, "
        "reason string",
    )
    out = tmp_path_factory.mktemp("meds") / "ds"
    summary = write_meds_dataset(
        spark, df, str(out), dataset_name="synthetic", etl_name="test", code_descriptions=desc,
        rejects=rej, summary={"note": "kept"}, rows_per_shard=12,
    )
    return out, summary


@pytest.mark.spark
def test_layout_and_summary(written: tuple[Path, dict]) -> None:
    out, summary = written
    assert summary["events"] == len(_rows()) and summary["subjects"] == len(SUBJECTS) + 1
    assert summary["note"] == "kept" and summary["rejects"] == 1
    assert json.loads((out / "summary.json").read_text())["events"] == summary["events"]
    assert len(summary["shards"]) > 1  # rows_per_shard forces several files
    meta = json.loads((out / "metadata" / "dataset.json").read_text())
    meds.DatasetMetadataSchema.validate(meta)
    assert meta["dataset_name"] == "synthetic" and meta["meds_version"] == meds.__version__
    rejects = pq.read_table(out / "rejects")
    assert rejects.schema.names == REJECTS_SCHEMA.names and rejects.num_rows == 1
    ids = pq.read_table(out / "metadata" / "subject_ids.parquet").to_pydict()
    assert ids["source_id"] == [str(i) for i in ids["subject_id"]]


@pytest.mark.spark
def test_shards_are_sorted_contiguous_and_typed(written: tuple[Path, dict]) -> None:
    out, _ = written
    seen: dict[int, str] = {}
    for f in sorted((out / "data").glob("*.parquet")):
        t = pq.read_table(f)
        assert t.schema.equals(EVENTS_SCHEMA, check_metadata=False), t.schema
        meds.DataSchema.validate(t)
        rows = t.to_pylist()
        keys = [(r["subject_id"], r["time"] is not None, r["time"] or dt.datetime.min, r["code"])
                for r in rows]
        assert keys == sorted(keys), f"{f.name} not sorted"
        for r in rows:
            assert seen.setdefault(r["subject_id"], f.name) == f.name, "subject spans two files"
        # static rows first within each subject
        for sid in {r["subject_id"] for r in rows}:
            times = [r["time"] for r in rows if r["subject_id"] == sid]
            n_static = sum(t is None for t in times)
            assert all(t is None for t in times[:n_static])
    assert set(seen) == set(SUBJECTS) | {99}


@pytest.mark.spark
def test_codes_cover_data_and_splits_are_deterministic(written: tuple[Path, dict]) -> None:
    out, summary = written
    codes = pq.read_table(out / "metadata" / "codes.parquet").to_pydict()
    data_codes = set(pq.read_table(out / "data").column("code").to_pylist())
    assert set(codes["code"]) == data_codes  # every code, and only codes in data
    assert dict(zip(codes["code"], codes["description"], strict=True))["LAB//A"] == "test A"
    splits = pq.read_table(out / "metadata" / "subject_splits.parquet")
    meds.SubjectSplitSchema.validate(splits)
    got = dict(zip(splits["subject_id"].to_pylist(), splits["split"].to_pylist(), strict=True))
    assert got == {s: assign_split(s) for s in SUBJECTS + [99]}
    assert sum(summary["splits"].values()) == len(got)
    report = validate_meds_dataset(str(out))
    assert report.events == summary["events"] and report.subjects == summary["subjects"]
    assert report.static_events == 2 * len(SUBJECTS)


@pytest.mark.spark
def test_validator_names_the_broken_file(written: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    out, _ = written
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    # drop a code from codes.parquet -> coverage error
    codes = pq.read_table(bad / "metadata" / "codes.parquet")
    pq.write_table(codes.slice(1), bad / "metadata" / "codes.parquet")
    with pytest.raises(MedsValidationError, match="codes.parquet"):
        validate_meds_dataset(str(bad))
    pq.write_table(codes, bad / "metadata" / "codes.parquet")
    # reverse one shard -> ordering error naming the file
    shard = sorted((bad / "data").glob("*.parquet"))[0]
    t = pq.read_table(shard)
    pq.write_table(t.take(list(range(t.num_rows - 1, -1, -1))), shard)
    with pytest.raises(MedsValidationError, match=shard.name):
        validate_meds_dataset(str(bad))


def test_check_sorted_table_catches_each_violation() -> None:
    def table(rows: list[tuple]) -> pa.Table:
        return pa.table(
            {
                "subject_id": pa.array([r[0] for r in rows], pa.int64()),
                "time": pa.array([r[1] for r in rows], pa.timestamp("us")),
                "code": pa.array([r[2] for r in rows], pa.string()),
            }
        )

    t1, t2 = dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 2)
    assert check_sorted_table(table([(1, None, "G"), (1, t1, "A"), (1, t1, "B"), (2, t2, "A")]), "ok") == 2
    for rows, what in [
        ([(1, t1, "A"), (1, None, "G")], "static after timed"),
        ([(1, t2, "A"), (1, t1, "A")], "time goes back"),
        ([(1, t1, "B"), (1, t1, "A")], "code order"),
        ([(2, t1, "A"), (1, t1, "A")], "subject order"),
        ([(1, t1, "A"), (2, t1, "A"), (1, t2, "A")], "non-contiguous"),
    ]:
        with pytest.raises(ValueError, match="x.parquet"):
            check_sorted_table(table(rows), "x.parquet")
        assert what
