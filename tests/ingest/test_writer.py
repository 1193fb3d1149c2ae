"""MEDS writer and validator on a small synthetic frame: layout, ordering invariants, metadata coverage."""

from __future__ import annotations

import datetime as dt
import json
import math
import random
import re
from pathlib import Path

import meds
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrfm.ingest.validate import MedsValidationError, validate_meds_dataset
from ehrfm.ingest.writer import SHARD, check_sorted_table, shard_plan
from ehrfm.meds_files import meds_data_files, read_meds_table
from ehrfm.prepare.splits import assign_split
from ehrfm.schema import DATA_SCHEMA, EVENTS_SCHEMA, REJECTS_SCHEMA, SPLITS

SUBJECTS = [7, 3, 1000000000123, 42, 5, 11, 2, 9]
# ratios that put these subjects (and 99) in all three splits
RATIOS = (0.5, 0.25, 0.25)
ROWS_PER_SHARD = 12


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
    # shards of an earlier run in either layout: a rerun must not leave them behind
    (out / "data" / "train").mkdir(parents=True)
    (out / "data" / "part-00000.parquet").write_text("stale flat shard")
    (out / "data" / "train" / "9.parquet").write_text("stale split shard")
    summary = write_meds_dataset(
        spark, df, str(out), dataset_name="synthetic", etl_name="test", code_descriptions=desc,
        rejects=rej, summary={"note": "kept"}, rows_per_shard=ROWS_PER_SHARD, split_ratios=RATIOS,
    )
    return out, summary


def _files(out: Path) -> list[str]:
    """Every file under data/ (hidden ones included), relative, sorted."""
    return sorted(p.relative_to(out / "data").as_posix() for p in (out / "data").rglob("*") if p.is_file())


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
    for f in sorted((out / "data").rglob("*.parquet")):
        t = pq.read_table(f)
        assert t.schema.equals(DATA_SCHEMA, check_metadata=False), t.schema
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
    data_codes = set(read_meds_table(out).column("code").to_pylist())
    assert set(codes["code"]) == data_codes  # every code, and only codes in data
    assert dict(zip(codes["code"], codes["description"], strict=True))["LAB//A"] == "test A"
    splits = pq.read_table(out / "metadata" / "subject_splits.parquet")
    meds.SubjectSplitSchema.validate(splits)
    got = dict(zip(splits["subject_id"].to_pylist(), splits["split"].to_pylist(), strict=True))
    assert got == {s: assign_split(s, RATIOS) for s in SUBJECTS + [99]}
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
    shard = sorted((bad / "data").rglob("*.parquet"))[0]
    t = pq.read_table(shard)
    pq.write_table(t.take(list(range(t.num_rows - 1, -1, -1))), shard)
    with pytest.raises(MedsValidationError, match=shard.name):
        validate_meds_dataset(str(bad))


@pytest.mark.spark
def test_shards_are_split_folders_numbered_from_zero(written: tuple[Path, dict]) -> None:
    """MEDS-Transforms layout: data/<split>/<n>.parquet, n contiguous per split, nothing else left over."""
    out, summary = written
    files = _files(out)
    assert all(re.fullmatch(r"(train|tuning|held_out)/\d+\.parquet", f) for f in files), files
    by_split: dict[str, list[int]] = {}
    for f in files:
        split, n = f.removesuffix(".parquet").split("/")
        by_split.setdefault(split, []).append(int(n))
    assert set(by_split) == set(SPLITS)  # RATIOS puts subjects in every split
    assert all(sorted(ns) == list(range(len(ns))) for ns in by_split.values()), by_split
    assert [s["file"] for s in summary["shards"]] == sorted(files, key=lambda f: (
        SPLITS.index(f.split("/")[0]), int(f.split("/")[1].removesuffix(".parquet"))))
    assert sorted(meds_data_files(out)) == sorted(str(out / "data" / s["file"]) for s in summary["shards"])
    for s in summary["shards"]:
        t = pq.read_table(out / "data" / s["file"])
        assert (t.num_rows, len(set(t.column("subject_id").to_pylist()))) == (s["rows"], s["subjects"])
    # shard counts follow the events of each split (ceil(rows / rows_per_shard), fewer when a shard is empty)
    events = read_meds_table(out, ["subject_id"]).column("subject_id").to_pylist()
    for split, ns in by_split.items():
        n_rows = sum(assign_split(sid, RATIOS) == split for sid in events)
        assert 1 <= len(ns) <= math.ceil(n_rows / ROWS_PER_SHARD)
    assert sum(len(ns) for ns in by_split.values()) > len(SPLITS)  # rows_per_shard splits train at least


@pytest.mark.spark
def test_subject_splits_agree_with_the_split_folders(written: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    out, _ = written
    splits = pq.read_table(out / "metadata" / "subject_splits.parquet").to_pydict()
    split_of = dict(zip(splits["subject_id"], splits["split"], strict=True))
    seen = set()
    for f in _files(out):
        for sid in pq.read_table(out / "data" / f).column("subject_id").to_pylist():
            assert split_of[sid] == f.split("/")[0], (sid, f)
            seen.add(sid)
    assert seen == set(split_of)
    # the validator catches a subject whose folder disagrees with subject_splits.parquet
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    moved = next(s for s in SUBJECTS if split_of[s] == "train")
    pq.write_table(pa.table({"subject_id": pa.array(list(split_of), pa.int64()),
                             "split": ["tuning" if s == moved else split_of[s] for s in split_of]}),
                   bad / "metadata" / "subject_splits.parquet")
    with pytest.raises(MedsValidationError, match=rf"data/train/\d+\.parquet: subject_id={moved} is in the "
                       r"'train' folder but .* gives split 'tuning'"):
        validate_meds_dataset(str(bad))


def test_shard_plan_follows_the_events_of_each_split() -> None:
    assert shard_plan({"train": 800, "tuning": 100, "held_out": 101}, 100) == (
        ["train"] * 8 + ["tuning"] + ["held_out"] * 2)
    assert shard_plan({"train": 5, "held_out": 0}, 100) == ["train"]  # an empty split has no shard
    assert shard_plan({}, 10) == []
    with pytest.raises(ValueError, match="rows_per_shard"):
        shard_plan({"train": 5}, 0)


def test_a_task_with_several_shards_writes_one_file_each() -> None:
    """The shard writer alone (no Spark): rows sorted by (_shard, subject, time, code) become one parquet
    file per _shard value (its bytes less the trailing magic that Spark's text writer adds), named for the
    split the plan gives that shard, without the _shard column; with one small statistics file per shard and
    no per-subject rows."""
    from ehrfm.ingest.writer import _STATS_ARROW, PARQUET_MAGIC, _shard_writer

    t1 = dt.datetime(2020, 1, 1)
    plan = ["train"] * 4 + ["tuning"] + ["held_out"] * 3
    rows = [(3, 1), (3, 2), (4, 5), (7, 6), (7, 8)]
    batch = pa.table({
        "subject_id": pa.array([r[1] for r in rows], pa.int64()),
        "time": pa.array([t1] * len(rows), pa.timestamp("us")),
        "code": ["A"] * len(rows),
        **{f.name: pa.nulls(len(rows), f.type) for f in EVENTS_SCHEMA if f.name not in ("subject_id", "time",
                                                                                          "code")},
        SHARD: pa.array([r[0] for r in rows], pa.int32()),
    }).to_batches(max_chunksize=2)  # batches do not follow shard boundaries
    out = pa.Table.from_batches(list(_shard_writer(plan)(iter(batch))))
    assert out["_f"].to_pylist() == [f"{kind}-{i:06d}" for i in (3, 4, 7)
                                     for kind in ("data", "stats", "subjects")]
    payload = dict(zip(out["_f"].to_pylist(), out["v"].to_pylist(), strict=True))
    assert not any(v.endswith(PARQUET_MAGIC) for v in payload.values())  # the text writer appends it
    files = {k: pq.read_table(pa.BufferReader(v + PARQUET_MAGIC)) for k, v in payload.items()}
    stats = pa.concat_tables([files[f"stats-{i:06d}"].cast(_STATS_ARROW) for i in (3, 4, 7)])
    assert stats["subject_id"].null_count == stats.num_rows  # nothing per subject
    file_rows = stats.filter(pc.is_null(stats["code"]))
    assert file_rows["file"].to_pylist() == ["train/_shard-000003.parquet", "tuning/_shard-000004.parquet",
                                             "held_out/_shard-000007.parquet"]
    assert file_rows["rows"].to_pylist() == [2, 1, 2] and file_rows["subjects"].to_pylist() == [2, 1, 2]
    assert files["subjects-000007"].to_pylist() == [{"subject_id": 6, "split": "held_out"},
                                                    {"subject_id": 8, "split": "held_out"}]
    written = files["data-000007"]
    assert written.schema.equals(DATA_SCHEMA, check_metadata=False)
    assert written.column("subject_id").to_pylist() == [6, 8]


@pytest.mark.spark
def test_partition_keys_give_each_shard_its_own_task(spark) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    from ehrfm.ingest.writer import _partition_keys

    for n in (1, 7, 50):
        keys = _partition_keys(spark, n)
        df = spark.createDataFrame([(k, i) for i, k in enumerate(keys)], "k int, i int").repartition(n, "k")
        got = {r["i"]: r["p"] for r in df.select("i", F.spark_partition_id().alias("p")).collect()}
        assert got == {i: i for i in range(n)}


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
