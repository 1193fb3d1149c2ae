"""`ehrfm ingest meds`: the MIMIC-IV demo MEDS-like parquet (real data) and a small MEDS root round trip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers.meds_valid import assert_meds_valid

from ehrfm.config.base import ConfigError
from ehrfm.config.ingest import MedsIngestConfig
from ehrfm.ingest.validate import validate_meds_dataset
from ehrfm.layout import Layout, MedsPaths

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def demo(spark, mimic_demo_meds: Path,  # type: ignore[no-untyped-def]
         tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    from ehrfm.ingest.meds_input import ingest_meds

    out = tmp_path_factory.mktemp("meds_in") / "out"
    return out, ingest_meds(spark, str(mimic_demo_meds), str(out))


@pytest.mark.slow
def test_demo_meds_parquet_keeps_every_event(demo: tuple[Path, dict[str, Any]],
                                             mimic_demo_meds: Path) -> None:
    out, summary = demo
    assert summary["subjects"] == 100 and summary["events"] == 916_166 and summary["rejects"] == 0
    assert summary["columns"]["numeric"] == "value"  # the file's `value` column became numeric_value
    report = validate_meds_dataset(str(out))
    assert report.events == 916_166 and report.subjects == 100 and report.static_events == 100
    src = pq.read_table(mimic_demo_meds, columns=["code", "value"])
    got = MedsPaths(out).read_table(["code", "numeric_value"])
    assert got["numeric_value"].null_count == src["value"].null_count
    assert pc_sum(got["numeric_value"]) == pytest.approx(pc_sum(src["value"]), rel=1e-6)
    codes = pq.read_table(MedsPaths(out).codes)["code"].to_pylist()
    assert set(codes) == set(src["code"].to_pylist())


def pc_sum(col) -> float:  # type: ignore[no-untyped-def]
    import pyarrow.compute as pc

    return float(pc.sum(col.cast("float64")).as_py())


@pytest.mark.parametrize(("shard", "as_uri"), [("train/0.parquet", False), ("part-0.parquet", True)])
def test_meds_root_round_trip_and_rejects(spark, tmp_path: Path,  # type: ignore[no-untyped-def]
                                          shard: str, as_uri: bool) -> None:
    """Through the stage runner: ``run(MedsIngestConfig, Layout)`` writes ``layout.meds``; the input root in
    either layout (MEDS-Transforms split folders or flat), hidden and ``_``-prefixed files skipped; the root
    in a folder with a space, given as a path or as its percent-encoded ``file:`` URI."""
    from ehrfm.ingest.meds_stage import run

    root = MedsPaths(tmp_path / "meds root")
    (root.data / "_temporary").mkdir(parents=True)
    (root.data / "_temporary" / "0.parquet").write_text("a writer's leftover, not parquet")
    (root.data / ".0.parquet.crc").write_text("checksum")
    (root.data / shard).parent.mkdir(parents=True, exist_ok=True)
    root.metadata.mkdir()
    df = pd.DataFrame(
        {
            "subject_id": [2, 1, 1, 1, None],
            "time": pd.to_datetime(pd.Series([None, "2020-01-02", None, "2020-01-01", "2020-01-01"])),
            "code": ["GENDER//M", "LAB//X", "GENDER//F", None, "LAB//X"],
            "numeric_value": [None, 1.5, None, None, 2.0],
            "unit": [None, "mg", None, None, None],
        }
    )
    df.to_parquet(root.data / shard, index=False, coerce_timestamps="us")
    pd.DataFrame({"code": ["LAB//X", "GENDER//M"], "description": ["lab x", None],
                  "parent_codes": [["LOINC/1-8"], None]}).to_parquet(root.codes, index=False)
    root.dataset_json.write_text(json.dumps({"dataset_name": "tiny-meds", "dataset_version": "3.1"}))
    layout = Layout(root=str(tmp_path / "pipeline"))
    cfg = MedsIngestConfig(input=root.root.as_uri() if as_uri else str(root.root),
                           split_ratios=(0.5, 0.25, 0.25), split_seed=3)
    summary = run(cfg, layout)
    assert summary.dataset_name == "tiny-meds" and summary.events == 3 and summary.rejects == 2
    assert summary.by_type == {"meds": {"in": 5, "mapped": 3, "events": 3, "rejected": 2, "skipped": 0,
                                        "duplicate": 0}}
    assert summary.reconciled and summary.source == "meds" and sum(summary.splits.values()) == 2
    out = layout.meds_paths
    assert summary.output == str(out.root)
    assert json.loads(out.summary.read_text())["split_seed"] == 3
    rej = pd.read_parquet(out.rejects).set_index("record_index").sort_index()
    assert list(rej.index) == [3, 4]
    assert rej.loc[3, "reason"] == "missing code" and rej.loc[4, "field"] == "subject_id"
    codes = pd.read_parquet(out.codes).set_index("code")
    assert codes.loc["LAB//X", "description"] == "lab x"
    assert codes.loc["GENDER//F", "description"] == "Administrative gender: F"  # minted: ehrfm describes it
    assert list(codes.loc["LAB//X", "parent_codes"]) == ["LOINC/1-8"]  # parents carry over
    assert json.loads(out.dataset_json.read_text())["dataset_version"] == "3.1"  # the input's release
    ev = out.read_table().to_pandas().sort_values(["subject_id", "time"], na_position="first")
    assert ev.unit.tolist() == [None, "mg", None] and ev.subject_id.tolist() == [1, 1, 2]
    assert set(ev.source) == {f"meds:{shard}"}  # the file's path under data/ names the source
    assert validate_meds_dataset(str(out.root)).subjects == 2
    assert assert_meds_valid(out.root)["subjects"] == 2  # and by the meds package's own schemas


def test_bad_column_mapping_is_a_clear_error(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ehrfm.ingest.meds_input import ingest_meds

    f = tmp_path / "x.parquet"
    df = pd.DataFrame({"subject_id": [1], "time": pd.to_datetime(["2020-01-01"]), "code": ["A"]})
    df.to_parquet(f)  # pandas writes nanoseconds
    with pytest.raises(ValueError, match=r"'time' is timestamp\[ns\]"):
        ingest_meds(spark, str(f), str(tmp_path / "o"))
    df.to_parquet(f, coerce_timestamps="us")
    with pytest.raises(ConfigError, match="numeric_col='val'"):
        ingest_meds(spark, str(f), str(tmp_path / "o"), numeric_col="val")
    with pytest.raises(FileNotFoundError, match="not found"):
        ingest_meds(spark, str(tmp_path / "missing.parquet"), str(tmp_path / "o"))

