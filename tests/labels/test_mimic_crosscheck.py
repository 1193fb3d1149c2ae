"""Real-data cross-check on the MIMIC-IV demo: the engine's labels (ingest -> Spark label job) equal an
independent pandas computation written here directly from hosp/admissions.csv.gz and hosp/patients.csv.gz.

Only those (and diagnoses_icd, for the forecast task) are ingested (a module-scoped fixture, to stay inside
the time budget), so the
subject's record end -- the follow-up used for censoring -- is computable from them independently too.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ehrfm.labels import available_tasks, label_events, load_tasks
from ehrfm.labels.dataset import label_dataset
from ehrfm.labels.direct import read_labels, read_meds_events

from .timelines import assert_engines_agree

H24, D30, D7 = pd.Timedelta(hours=24), pd.Timedelta(days=30), pd.Timedelta(days=7)


@pytest.fixture(scope="module")
def mimic_labels(mimic_demo: Path, spark: object,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from ehrfm.ingest.mimic.ingest import ingest_mimic

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    root = tmp_path_factory.mktemp("mimic")
    (root / "raw" / "hosp").mkdir(parents=True)
    for table in ("admissions", "patients", "diagnoses_icd"):
        shutil.copy(mimic_demo / "hosp" / f"{table}.csv.gz", root / "raw" / "hosp")
    ingest_mimic(spark, str(root / "raw"), str(root / "meds"))  # type: ignore[arg-type]
    # every shipped task with the default (Spark-expression) engine; the reference twin runs beside it
    label_dataset(spark, root / "meds", load_tasks("all"), root / "labels")  # type: ignore[arg-type]
    out = {t: read_labels(root / "labels" / f"{t}.parquet").to_pandas() for t in available_tasks()}
    out["reference"] = label_events(read_meds_events(root / "meds"), load_tasks("all"))
    yield out


@pytest.fixture(scope="module")
def raw(mimic_demo: Path) -> pd.DataFrame:
    """One row per admission with the subject's death time and record end, straight from the CSVs."""
    adm = pd.read_csv(mimic_demo / "hosp" / "admissions.csv.gz",
                      parse_dates=["admittime", "dischtime", "deathtime", "edregtime", "edouttime"])
    pat = pd.read_csv(mimic_demo / "hosp" / "patients.csv.gz", parse_dates=["dod"])
    # death: the in-hospital deathtime, else the date of death at 23:59:59
    inhosp = adm.groupby("subject_id")["deathtime"].min()
    dod = pat.set_index("subject_id")["dod"] + pd.Timedelta("23:59:59")
    death = inhosp.reindex(dod.index).fillna(dod)
    times = pd.concat([adm[["subject_id", c]].rename(columns={c: "t"})
                       for c in ("admittime", "dischtime", "deathtime", "edregtime", "edouttime")])
    record_end = pd.concat([times, death.rename("t").reset_index()]).groupby("subject_id")["t"].max()
    adm["death"] = adm["subject_id"].map(death)
    adm["record_end"] = adm["subject_id"].map(record_end)
    return adm


def _as_set(df: pd.DataFrame) -> set[tuple[int, pd.Timestamp, bool]]:
    return {(int(s), pd.Timestamp(t), bool(v)) for s, t, v in zip(df["subject_id"], df["prediction_time"],
                                                                 df["boolean_value"], strict=True)}


def _expected_readmissions(adm: pd.DataFrame) -> pd.DataFrame:
    # discharged alive: not an in-hospital death (those carry the hadm_id), death (if any) after the discharge
    alive = adm["death"].isna() | (adm["death"] > adm["dischtime"])
    index = adm[(adm["hospital_expire_flag"] == 0) & alive]
    pairs = index.merge(adm[["subject_id", "hadm_id", "admittime"]], on="subject_id", suffixes=("", "_next"))
    gap = pairs["admittime_next"] - pairs["dischtime"]
    hit = pairs[(pairs["hadm_id_next"] != pairs["hadm_id"]) & (gap > pd.Timedelta(0)) & (gap <= D30)]
    index = index.assign(value=index["hadm_id"].isin(hit["hadm_id"]))
    died = index["death"].notna() & (index["death"] <= index["dischtime"] + D30)
    known = index["value"] | died | (index["record_end"] >= index["dischtime"] + D30)
    return index[known].rename(columns={"dischtime": "prediction_time", "value": "boolean_value"})


@pytest.mark.spark
@pytest.mark.slow
def test_readmission_30d_matches_admissions_csv(mimic_labels: dict[str, Any], raw: pd.DataFrame) -> None:
    expected = _expected_readmissions(raw)
    got = mimic_labels["readmission_30d"]
    assert _as_set(got) == _as_set(expected)
    # SOURCE.md: 53 index admissions (26 patients) are followed by an admission 0-30 d after discharge; none
    # of them is an in-hospital death and none starts exactly at the discharge, so all 53 stay positive
    pos = got[got["boolean_value"]]
    assert len(pos) == 53 and pos["subject_id"].nunique() == 26


@pytest.mark.spark
@pytest.mark.slow
def test_inhospital_mortality_and_los_match_admissions_csv(mimic_labels: dict[str, Any],
                                                           raw: pd.DataFrame) -> None:
    pred = raw["admittime"] + H24
    index = raw[(raw["dischtime"] > pred) & (raw["death"].isna() | (raw["death"] > pred))].copy()
    index["prediction_time"] = index["admittime"] + H24
    index["boolean_value"] = index["hospital_expire_flag"] == 1
    assert _as_set(mimic_labels["mortality_inhospital"]) == _as_set(index)
    # 15 in-hospital deaths in the demo; one stay lasted under 24 h (not indexed at admission + 24 h)
    assert raw["hospital_expire_flag"].sum() == 15
    assert mimic_labels["mortality_inhospital"]["boolean_value"].sum() == 14
    index["boolean_value"] = (index["dischtime"] - index["admittime"]) > D7
    assert _as_set(mimic_labels["los_gt_7d"]) == _as_set(index)
    assert mimic_labels["los_gt_7d"]["boolean_value"].sum() == index["boolean_value"].sum() > 0


@pytest.mark.spark
@pytest.mark.slow
def test_next_visit_codes_match_diagnoses_icd(mimic_labels: dict[str, Any], raw: pd.DataFrame,
                                              mimic_demo: Path) -> None:
    dx = pd.read_csv(mimic_demo / "hosp" / "diagnoses_icd.csv.gz", dtype={"icd_code": str})
    dx["code"] = "DIAGNOSIS//ICD//" + dx["icd_version"].astype(str) + "//" + dx["icd_code"].str.strip()
    codes = dx.groupby("hadm_id")["code"].agg(lambda c: tuple(sorted(set(c))))  # type: ignore[type-var]
    index = raw[
        (raw["hospital_expire_flag"] == 0) & (raw["death"].isna() | (raw["death"] > raw["dischtime"]))]
    # the next visit is the one whose START (ED registration or admission) comes first after the discharge;
    # one ED visit can precede two admissions (10002930: ED 05:04, discharge 11:44, re-admission 11:45)
    starts = pd.concat([raw[["subject_id", "hadm_id", c]].rename(columns={c: "t"})
                        for c in ("admittime", "edregtime")])
    pairs = index.merge(starts.dropna(), on="subject_id", suffixes=("", "_next"))
    pairs = pairs[pairs["t"] > pairs["dischtime"]].sort_values(["subject_id", "dischtime", "t"])
    nxt = pairs.drop_duplicates(["subject_id", "dischtime"])
    expected = {(int(s), t, codes[h])
                for s, t, h in zip(nxt["subject_id"], nxt["dischtime"], nxt["hadm_id_next"],
                                                         strict=True) if h in codes.index}
    got = mimic_labels["next_visit_codes"]
    assert {(int(s), t, tuple(c))
            for s, t, c in zip(got["subject_id"], got["prediction_time"], got["target_codes"],
                                                     strict=True)} == expected
    assert len(expected) > 100


@pytest.mark.spark
@pytest.mark.slow
def test_spark_engine_equals_the_reference_engine_on_every_task(mimic_labels: dict[str, Any]) -> None:
    assert_engines_agree(mimic_labels)
