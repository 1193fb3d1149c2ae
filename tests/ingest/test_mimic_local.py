"""The local (polars) MIMIC-IV engine against the Spark one: the one rules table, two interpreters, one
output. The MIMIC-IV demo and a hand-made root full of bad rows go through both; events (every column, the
order within each subject), rejects, summary counts, metadata, splits and subject ids must be identical."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from ehrfm.ingest.mimic.local import PREPARE_LOCAL, ingest_mimic_local
from ehrfm.ingest.mimic.prepare import PREPARE
from tests.helpers.meds_valid import assert_meds_valid

pytestmark = pytest.mark.spark

# summary.json keys that name the engine, not the data
ENGINE_KEYS = {"spark_master", "engine"}
EVENT_ORDER = ["subject_id", "time", "code"]


def _shards(root: Path) -> dict[str, pd.DataFrame]:
    return {str(p.relative_to(root / "data")): pq.read_table(p).to_pandas()
            for p in sorted((root / "data").rglob("*.parquet"))}


def assert_same_output(spark_out: Path, local_out: Path) -> None:
    """Both engines wrote the same dataset: same shard files with the same rows in the same (subject, time,
    code) order (rows that tie on all three may come in either order: compared as sets of rows), same
    rejects, metadata and summary (bar the engine's name and dataset.json's created_at)."""
    a, b = _shards(spark_out), _shards(local_out)
    assert list(a) == list(b), "different shard files"
    for name in a:
        sa, sb = a[name], b[name]
        assert list(sa.columns) == list(sb.columns) and len(sa) == len(sb), name
        pd.testing.assert_frame_equal(sa[EVENT_ORDER], sb[EVENT_ORDER], check_dtype=True, obj=name)
        cols = list(sa.columns)
        ra = sa.sort_values(cols, na_position="first", kind="stable").reset_index(drop=True)
        rb = sb.sort_values(cols, na_position="first", kind="stable").reset_index(drop=True)
        pd.testing.assert_frame_equal(ra, rb, check_dtype=True, obj=name)
    for meta in ("codes", "subject_splits", "subject_ids"):
        pd.testing.assert_frame_equal(pd.read_parquet(spark_out / "metadata" / f"{meta}.parquet"),
                                      pd.read_parquet(local_out / "metadata" / f"{meta}.parquet"), obj=meta)
    da, db = (json.loads((o / "metadata" / "dataset.json").read_text()) for o in (spark_out, local_out))
    assert {k: v for k, v in da.items() if k != "created_at"} == \
        {k: v for k, v in db.items() if k != "created_at"}
    rej_cols = ["resource_type", "record_index", "reason", "field", "resource_id", "source_file"]
    ra = pd.read_parquet(spark_out / "rejects").sort_values(rej_cols).reset_index(drop=True)
    rb = pd.read_parquet(local_out / "rejects").sort_values(rej_cols).reset_index(drop=True)
    pd.testing.assert_frame_equal(ra[rej_cols], rb[rej_cols], check_dtype=False, obj="rejects")
    sa_, sb_ = (json.loads((o / "summary.json").read_text()) for o in (spark_out, local_out))
    assert {k: v for k, v in sa_.items() if k not in ENGINE_KEYS} == \
        {k: v for k, v in sb_.items() if k not in ENGINE_KEYS}
    assert sb_["engine"] == "local"


def test_one_prepare_step_per_name_in_both_engines() -> None:
    assert set(PREPARE_LOCAL) == set(PREPARE)


@pytest.fixture(scope="module")
def demo_local(mimic_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("mimic_local") / "meds"
    return out, ingest_mimic_local(str(mimic_demo), str(out))


def test_demo_identical_to_spark(mimic_demo_ingested: tuple[Path, dict[str, Any], pd.DataFrame],
                                 demo_local: tuple[Path, dict[str, Any]]) -> None:
    spark_out, spark_summary, _ = mimic_demo_ingested
    local_out, local_summary = demo_local
    assert local_summary["events"] == spark_summary["events"] > 200_000
    assert local_summary["rules"] == spark_summary["rules"]
    assert local_summary["tables"] == spark_summary["tables"]
    assert_same_output(spark_out, local_out)


def test_demo_local_is_valid_meds(demo_local: tuple[Path, dict[str, Any]]) -> None:
    counts = assert_meds_valid(demo_local[0])
    assert counts


# --- a hand-made root with bad rows of every kind -------------------------------------------------------
PATIENTS = """subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod
1,F,40,2150,2011 - 2013,2151-06-01
2,,30,2150,2011 - 2013,
 3 ,M,50,2150,2011 - 2013,2152-01-01
x,F,20,2150,2011 - 2013,
5,M,,2150,2011 - 2013,not a date
1.0,F,40,2150,2011 - 2013,
"""
ADMISSIONS = (
    "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location,"
    "insurance,language,marital_status,race,edregtime,edouttime\n"
    "1,100,2150-03-01 10:00:00,2150-03-05 12:00:00,,URGENT,ER,HOME,Medicare,ENGLISH,MARRIED,WHITE,"
    "2150-03-01 08:00:00,2150-03-01 10:30:00\n"
    "3,300,2151-12-30 10:00:00,2152-01-01 09:00:00,2152-01-01 09:00:00,URGENT, ,DIED,Medicaid,ENGLISH,,"
    "BLACK,,\n"
    "2,200,2150-05-01,2150-05-02T11:00:00,,ELECTIVE,,,  ,,,,bad,\n"
    "9,900,2150-05-01 10:00:00,2150-05-02 11:00:00.5,,ELECTIVE,CLINIC,HOME,,,,,,\n"
)
DIAGNOSES = """subject_id,hadm_id,seq_num,icd_code,icd_version
1,100,1,I10,10
1,999,1,E119,10
3,300,1,,10
3,300,2, 4019 ,9
"""
LABEVENTS = """labevent_id,subject_id,hadm_id,specimen_id,itemid,charttime,value,valuenum,valueuom
10,1,100,5,50912,2150-03-02 06:00:00,1.1,1.1,mg/dL
11,1,100,5,50912,2150-13-45 25:00:00,1.2,1.2,mg/dL
12,,100,5,50912,2150-03-02 06:00:00,1.3,1.3,mg/dL
13,4,,5,50912,2150-03-02 06:00:00,1.4,1.4,mg/dL
14,1,100,5,50912,2100-03-02 06:00:00,1.5,1.5,mg/dL
15,1,100,5,51000,2150-03-02 06:00:00,POSITIVE,,
16,1,100,5,51000,2150-03-02 06:00:00,"a, ""quoted"" text",,
17,3,300,5,,2151-12-31 06:00:00,1,1,
18,3,300,5,50912,2151-12-31 06:00:00, 2.5 , 2.5 ,mg/dL
"""
OMR = """subject_id,chartdate,seq_num,result_name,result_value
1,2150-03-01,1,Blood Pressure,120/80
1,2150-03-01,2,Weight (Lbs),180.5
1,,3,BMI,22
3,2151-12-30,1,Blood Pressure,n/a
"""
PRESCRIPTIONS = """subject_id,hadm_id,pharmacy_id,starttime,drug,ndc
1,100,1,2150-03-02 08:00:00,Aspirin,00904198861
1,100,2,2150-03-02 08:00:00,Heparin,0
1,100,3,2150-03-02 08:00:00,,00000000000
3,300,4,2151-12-31 08:00:00,Insulin,
"""


def _tiny_root(base: Path) -> Path:
    root = base / "mimiciv" / "3.1"
    for sub, name, text in [("hosp", "patients", PATIENTS), ("hosp", "admissions", ADMISSIONS),
                            ("hosp", "diagnoses_icd", DIAGNOSES), ("hosp", "labevents", LABEVENTS),
                            ("hosp", "omr", OMR), ("hosp", "prescriptions", PRESCRIPTIONS)]:
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / f"{name}.csv").write_text(text)
    return root


def test_bad_rows_give_the_same_rejects_and_events(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from ehrfm.ingest.mimic.ingest import ingest_mimic

    root = _tiny_root(tmp_path)
    ingest_mimic(spark, str(root), str(tmp_path / "spark"), rows_per_shard=5)
    summary = ingest_mimic_local(str(root), str(tmp_path / "local"), rows_per_shard=5)
    assert summary["rejects"] >= 8 and summary["dataset_version"]["value"] == "3.1"
    assert_same_output(tmp_path / "spark", tmp_path / "local")
    rej = pd.read_parquet(tmp_path / "local" / "rejects")
    assert set(rej.columns) >= {"source_file", "record_index", "resource_type", "reason"}
    # the field of a reject found against the births names what is to blame (it was null on Spark)
    assert (rej[rej.reason.str.startswith("subject_id not in patients")].field == "subject_id").all()
    assert (rej[rej.reason == "time before birth"].field == "time").all()
    assert (rej.reason == "time before birth").any()
    assert_meds_valid(tmp_path / "local")


def test_a_percent_encoded_root_uri_reads_the_same_tables(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A root given as ``Path.as_uri()`` of a folder with a space (``file:///.../mimic%20iv``) is read by both
    engines as the plain path is: the same dataset."""
    from ehrfm.ingest.mimic.ingest import ingest_mimic

    root = _tiny_root(tmp_path / "mimic iv")
    ingest_mimic_local(str(root), str(tmp_path / "plain"), rows_per_shard=5)
    ingest_mimic_local(root.as_uri(), str(tmp_path / "local"), rows_per_shard=5)
    ingest_mimic(spark, root.as_uri(), str(tmp_path / "spark"), rows_per_shard=5)
    assert_same_output(tmp_path / "plain", tmp_path / "local")
    assert_same_output(tmp_path / "spark", tmp_path / "local")


def test_missing_column_names_table_and_column(tmp_path: Path) -> None:
    root = _tiny_root(tmp_path)
    (root / "hosp" / "labevents.csv").write_text(LABEVENTS.replace("valueuom", "unit_of_measure"))
    missing = r"table labevents \(hosp/labevents\) has no column\(s\) \['valueuom'\]"
    with pytest.raises(ValueError, match=missing):
        ingest_mimic_local(str(root), str(tmp_path / "out"))
    (root / "hosp" / "labevents.csv").write_text(LABEVENTS.replace("valuenum", "num"))
    with pytest.raises(ValueError, match=r"prepare step value_or_text: table labevents .*\['valuenum'\]"):
        ingest_mimic_local(str(root), str(tmp_path / "out"))


def test_missing_patients_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="patients"):
        ingest_mimic_local(str(tmp_path), str(tmp_path / "out"))


def test_cli_local_engine_starts_no_spark(tmp_path: Path) -> None:
    """``ehrfm ingest mimic --engine local`` in a fresh interpreter: a valid dataset, and pyspark is never
    imported (so no JVM starts)."""
    root = _tiny_root(tmp_path)
    code = ("import sys; from ehrfm.cli import main; "
            f"rc = main(['ingest', 'mimic', '--input', {str(root)!r}, '--meds', {str(tmp_path / 'meds')!r}, "
            "'--engine', 'local']); "
            "assert 'pyspark' not in sys.modules, 'pyspark imported'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((tmp_path / "meds" / "summary.json").read_text())
    assert summary["engine"] == "local" and summary["events"] > 0
    assert_meds_valid(tmp_path / "meds")


def test_auto_engine_is_local_unless_a_cluster_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from ehrfm.config.ingest import MimicIngestConfig
    from ehrfm.config.spark import SparkConfig
    from ehrfm.config.spark import resolve_engine as resolve

    def resolve_engine(cfg: MimicIngestConfig) -> str:
        return resolve(cfg.engine, cfg.spark.master, [cfg.input or ""])

    monkeypatch.delenv("EHRFM_SPARK_MASTER", raising=False)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert resolve_engine(MimicIngestConfig(input="x", engine="auto")) == "local"
    assert resolve_engine(MimicIngestConfig(input="x", engine="auto",
                                            spark=SparkConfig(master="local[2]"))) == "local"
    assert resolve_engine(MimicIngestConfig(input="x", engine="auto",
                                            spark=SparkConfig(master="spark://h:7077"))) == "spark"
    monkeypatch.setenv("EHRFM_SPARK_MASTER", "yarn")
    assert resolve_engine(MimicIngestConfig(input="x", engine="auto")) == "spark"
    assert resolve_engine(MimicIngestConfig(input="x", engine="local")) == "local"
    assert resolve_engine(MimicIngestConfig(input="x")) == "spark"  # the default is auto: yarn -> spark
    monkeypatch.delenv("EHRFM_SPARK_MASTER")
    assert MimicIngestConfig(input="x").engine == "auto"
    assert resolve_engine(MimicIngestConfig(input="x")) == "local"
    assert resolve_engine(MimicIngestConfig(input="hdfs://nn/mimic", engine="auto")) == "spark"
