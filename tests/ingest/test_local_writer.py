"""The local MEDS writer (polars + pyarrow) against the Spark writer: the same synthetic events give the same
files (shard names, subjects per shard, rows), metadata, rejects and summary; Spark's shard hash in numpy."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm.ingest.local_writer import spark_hash_long, write_meds_local
from tests.helpers.meds_valid import assert_meds_valid

RATIOS = (0.5, 0.25, 0.25)
ROWS_PER_SHARD = 15
IDS = [0, 1, -1, 7, 42, 2**31 - 1, 2**31, -(2**31), 2**40 + 3, 2**63 - 1, -(2**63), 1000000000123]


def _events() -> pd.DataFrame:
    """Scrambled events of 30 subjects: static rows, ties on time, deaths with later events, null values."""
    rng = random.Random(1)
    rows: list[tuple[Any, ...]] = []
    for sid in [rng.randrange(1, 10**9) for _ in range(30)]:
        rows.append((sid, None, "GENDER//F", None, None, "src:a"))
        for day in rng.sample(range(1, 20), 4):
            t = dt.datetime(2020, 1, day, 8)
            rows += [(sid, t, "LAB//B", float(day), None, "src:a"), (sid, t, "LAB//A", None, "pos", "src:b")]
        if sid % 3 == 0:
            rows += [(sid, dt.datetime(2020, 1, 10), "MEDS_DEATH", None, None, "src:a"),
                     (sid, dt.datetime(2020, 2, 1), "LAB//C", 1.5, None, "src:b")]
    rng.shuffle(rows)
    return pd.DataFrame(rows, columns=["subject_id", "time", "code", "numeric_value", "text_value", "source"])


def test_spark_hash_long_matches_spark(spark) -> None:  # type: ignore[no-untyped-def]
    from pyspark.sql import functions as F

    got = [r[0] for r in spark.createDataFrame([(i,) for i in IDS], "id long")
           .select(F.hash("id")).collect()]
    assert spark_hash_long(np.array(IDS, dtype=np.int64)).tolist() == got


@pytest.mark.spark
def test_same_dataset_as_the_spark_writer(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ehrfm.ingest.writer import write_meds_dataset

    events = _events()
    desc = pa.table({"code": ["LAB//A", "LAB//A", "LAB//B", "UNUSED"], "description": ["b", "a", None, "x"],
                     "parent_codes": [["P2"], ["P1", "P2"], ["Q"], None]})
    rejects = pa.table({"source_file": ["f.csv"], "record_index": [3], "resource_type": ["t"],
                        "resource_id": ["x1"], "field": ["time"], "reason": ["unparseable time"]})
    ids = pa.table({"subject_id": sorted(set(events.subject_id)),
                    "source_id": [f"s{i}" for i in sorted(set(events.subject_id))]})
    args: dict[str, Any] = dict(dataset_name="synthetic", etl_name="test", summary={"note": "kept"},
                                rows_per_shard=ROWS_PER_SHARD, split_ratios=RATIOS, dataset_version="1.0")
    sdf = spark.createDataFrame(events.astype(object).where(events.notna(), None),
                                "subject_id long, time timestamp, code string, numeric_value double, "
                                "text_value string, source string")
    s_sum = write_meds_dataset(spark, sdf, str(tmp_path / "spark"),
                               code_descriptions=spark.createDataFrame(desc.to_pandas()),
                               rejects=spark.createDataFrame(rejects.to_pandas()),
                               subject_ids=spark.createDataFrame(ids.to_pandas()), **args)
    l_sum = write_meds_local(pl.from_pandas(events).lazy(), str(tmp_path / "local"), code_descriptions=desc,
                             rejects=rejects, subject_ids=ids, **args)
    assert len(l_sum["shards"]) > 3 and l_sum["after_death"]["total"] > 0
    assert {k: v for k, v in s_sum.items() if k != "spark_master"} == \
        {k: v for k, v in l_sum.items() if k != "engine"}
    from tests.ingest.test_mimic_local import assert_same_output

    assert_same_output(tmp_path / "spark", tmp_path / "local")
    rows = pq.read_table(tmp_path / "local" / "metadata" / "codes.parquet").to_pylist()
    codes = {r["code"]: r for r in rows}
    assert codes["LAB//A"]["description"] == "a"  # the smallest of the code's descriptions
    assert codes["LAB//A"]["parent_codes"] == ["P1", "P2"]  # the sorted union
    assert_meds_valid(tmp_path / "local")


def test_defaults_and_arrow_input(tmp_path: Path) -> None:
    """No descriptions, rejects or subject ids: codes from the events, ids = subject ids as text."""
    events = pa.Table.from_pandas(_events(), preserve_index=False)
    summary = write_meds_local(events, str(tmp_path / "out"), dataset_name="d", etl_name="e")
    assert summary["events"] == events.num_rows and summary["rejects"] == 0
    ids = pd.read_parquet(tmp_path / "out" / "metadata" / "subject_ids.parquet")
    assert list(ids.source_id) == [str(i) for i in ids.subject_id] and ids.subject_id.is_monotonic_increasing
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["engine"] == "local"
    assert_meds_valid(tmp_path / "out")


def test_missing_required_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['code'\]"):
        write_meds_local(pl.DataFrame({"subject_id": [1]}), str(tmp_path / "out"), dataset_name="d",
                         etl_name="e")
