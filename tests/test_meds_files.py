"""ehrfm.meds_files: the event files of a MEDS dataset in either layout (flat ``data/*.parquet`` of older
ehrfm and other tools, ``data/<split>/<n>.parquet`` of MEDS-Transforms and ehrfm), and the readers that use
it (label, prepare, tokenize) giving the same results on both."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from helpers.meds import write_meds

from ehrfm.layout import Layout, MedsPaths
from ehrfm.meds_files import data_files, meds_data_files, read_meds_spark, read_meds_table
from ehrfm.schema import SUBJECT_ID


def _events_file(path: Path, subjects: list[int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"subject_id": pa.array(subjects, pa.int64()),
                             "code": [f"C//{s}" for s in subjects]}), path)


def _both_layouts(tmp_path: Path) -> tuple[Path, Path]:
    """The same six subjects as one flat file and as split folders (with a writer's leftovers)."""
    flat, split = tmp_path / "flat", tmp_path / "split"
    _events_file(flat / "data" / "part-00000.parquet", [1, 2, 3, 4, 5, 6])
    _events_file(split / "data" / "train" / "0.parquet", [1, 2])
    _events_file(split / "data" / "train" / "1.parquet", [3])
    _events_file(split / "data" / "tuning" / "0.parquet", [4])
    _events_file(split / "data" / "held_out" / "0.parquet", [5, 6])
    (split / "data" / "train" / "_shard-000007.parquet").write_text("an unfinished write")
    return flat, split


def test_data_files_natural_order_skipping_hidden(tmp_path: Path) -> None:
    data = tmp_path / "meds" / "data"
    for rel in ("train/0.parquet", "train/2.parquet", "train/10.parquet", "held_out/0.parquet"):
        _events_file(data / rel, [1])
    for rel in ("_temporary/0/x.parquet", ".staging/x.parquet", "train/.0.parquet.crc", "train/_SUCCESS",
                "train/_shard-000001.parquet", "README.txt"):
        (data / rel).parent.mkdir(parents=True, exist_ok=True)
        (data / rel).write_text("not an event file")
    expected = [str(data / r) for r in ("held_out/0.parquet", "train/0.parquet", "train/2.parquet",
                                        "train/10.parquet")]
    assert meds_data_files(tmp_path / "meds") == expected == data_files(data)
    assert MedsPaths(tmp_path / "meds").data_files() == expected
    assert meds_data_files(tmp_path / "nowhere") == []


def test_read_meds_table_reads_both_layouts(tmp_path: Path) -> None:
    flat, split = _both_layouts(tmp_path)
    tables = [read_meds_table(root).sort_by(SUBJECT_ID) for root in (flat, split)]
    assert tables[0].equals(tables[1]) and tables[0].num_rows == 6
    picked = MedsPaths(split).read_table(["code"], ds.field(SUBJECT_ID) >= 5)
    assert picked.column_names == ["code"] and sorted(picked["code"].to_pylist()) == ["C//5", "C//6"]
    (tmp_path / "empty" / "data").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"meds=.*empty.*no event files under data/"):
        read_meds_table(tmp_path / "empty")


@pytest.mark.spark
def test_read_meds_spark_reads_both_layouts(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    flat, split = _both_layouts(tmp_path)
    with pytest.raises(Exception, match="UNABLE_TO_INFER_SCHEMA"):  # why the helper exists
        spark.read.parquet(str(split / "data")).count()
    for root in (flat, split):
        rows = read_meds_spark(spark, root).orderBy(SUBJECT_ID).collect()
        assert [r[SUBJECT_ID] for r in rows] == [1, 2, 3, 4, 5, 6]
    (tmp_path / "empty" / "data").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no event files"):
        read_meds_spark(spark, tmp_path / "empty")


# --- the readers that matter, on a dataset written by the writer and the same events written flat ---------
TASK = "death_after_visit"
SPEC = {"name": TASK, "kind": "binary", "index": {"codes": "VISIT//END"}, "prediction_time": "0h",
        "outcome": {"codes": "MEDS_DEATH", "within": "30d"}}


Row = tuple[int, dt.datetime | None, str, float | None, str | None]


def _population(n: int = 40) -> list[Row]:
    """Static sex, birth, one to three visits with labs, some deaths soon after a visit; in MEDS order."""
    rng = random.Random(5)
    rows: list[Row] = []
    for sid in range(1, n + 1):
        rows.append((sid, None, f"GENDER//{rng.choice('FM')}", None, None))
        t = dt.datetime(1950 + rng.randrange(40), 1, 1)
        rows.append((sid, t, "MEDS_BIRTH", None, None))
        t = dt.datetime(2019, 1, 1) + dt.timedelta(days=rng.randrange(300))
        for v in range(rng.randint(1, 3)):
            enc = f"{sid}-{v}"
            rows.append((sid, t, "VISIT//START", None, enc))
            for h in range(rng.randint(1, 4)):
                rows.append((sid, t + dt.timedelta(hours=h + 1), f"LAB//{rng.choice('AB')}",
                             round(rng.uniform(0, 10), 2), enc))
            t += dt.timedelta(days=rng.randint(1, 5))
            rows.append((sid, t, "VISIT//END", None, enc))
            t += dt.timedelta(days=rng.randint(5, 60))
        if rng.random() < 0.3:
            rows.append((sid, t, "MEDS_DEATH", None, None))
    return sorted(rows, key=lambda r: (r[0], r[1] is not None, r[1] or dt.datetime.min, r[2]))


def _label_rows(path: Path) -> list[tuple[object, ...]]:
    t = pq.read_table(path, columns=["subject_id", "prediction_time", "boolean_value"])
    return sorted(zip(*(t.column(c).to_pylist() for c in t.column_names), strict=True))


def _token_rows(folder: Path) -> list[str]:
    rows = pq.read_table(folder).to_pylist()
    return sorted(json.dumps(r, default=str, sort_keys=True) for r in rows)


@pytest.mark.spark
def test_label_prepare_tokenize_agree_on_both_layouts(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ehrfm.config.prepare import PrepareConfig
    from ehrfm.config.tokenize import TokenizeConfig
    from ehrfm.ingest.writer import write_meds_dataset
    from ehrfm.labels import parse_spec
    from ehrfm.labels.dataset import label_dataset
    from ehrfm.labels.direct import read_meds_events
    from ehrfm.prepare.stage import run as prepare
    from ehrfm.tokenize.stage import run as tokenize

    rows = _population()
    columns = ["subject_id", "time", "code", "numeric_value", "encounter_id"]
    sdf = spark.createDataFrame(
        rows, "subject_id long, time timestamp_ntz, code string, numeric_value float, encounter_id string")
    events = pd.DataFrame(rows, columns=columns).astype({"time": "datetime64[us]",
                                                         "numeric_value": "float32"})
    written = tmp_path / "split"
    summary = write_meds_dataset(spark, sdf, str(written), dataset_name="t", etl_name="test",
                                 rows_per_shard=60)
    assert all("/" in s["file"] for s in summary["shards"]) and len(summary["shards"]) > 3
    # the same events and splits written flat, as older ehrfm and other tools do
    splits = pq.read_table(MedsPaths(written).subject_splits).to_pandas()
    flat = write_meds(tmp_path / "flat", events, splits)
    assert [Path(f).name for f in meds_data_files(flat)] == ["part-0.parquet"]

    results = {}
    for name, root in (("split", written), ("flat", flat)):
        lay = Layout(root=str(tmp_path / f"pipe_{name}"), meds=str(root))
        got: dict[str, object] = {}
        label_dataset(spark, root, [parse_spec(SPEC)], lay.labels_dir)
        got["labels"] = _label_rows(lay.label_table(TASK))
        got["direct events"] = read_meds_events(root).sort_values(
            ["subject_id", "time", "code"], na_position="first", kind="stable").values.tolist()
        for engine in ("spark", "local"):
            prepare(PrepareConfig(min_count=1, n_bins=3, tasks=[TASK], engine=engine), lay)
            got[f"prepare {engine}"] = (lay.token_paths.vocab.read_text(), lay.token_paths.bins.read_text())
            tokenize(TokenizeConfig(tasks=[TASK], engine=engine), lay)
            got[f"tokenize {engine}"] = [_token_rows(lay.token_paths.pretrain),
                                         _token_rows(lay.token_paths.task(TASK))]
        results[name] = got
    assert results["split"]["labels"], "the task must have rows for the comparison to mean something"
    assert any(r[2] for r in results["split"]["labels"])  # type: ignore[union-attr, index]
    for key, value in results["split"].items():
        assert value == results["flat"][key], key
    # vocab.json identical; bins.json: exact locally, percentile_approx in Spark (tests/prepare/test_bins.py)
    assert results["split"]["prepare spark"][0] == results["split"]["prepare local"][0]
