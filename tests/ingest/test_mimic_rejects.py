"""MIMIC ingest on a tiny hand-made root (plain .csv, chartevents present, most tables absent): every bad
record becomes a reject naming table, file, row and reason; good records become the right events."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from ehrfm.ingest.mimic.rules import load_rules

pytestmark = pytest.mark.spark

PATIENTS = """subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod
1,F,40,2150,2011 - 2013,2151-06-01
2,,30,2150,2011 - 2013,
3,M,50,2150,2011 - 2013,2152-01-01
"""
ADMISSIONS = """subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,admission_location,discharge_location,insurance,language,marital_status,race,edregtime,edouttime,hospital_expire_flag
1,100,2150-03-01 10:00:00,2150-03-05 12:00:00,,URGENT,P1,ER,HOME,Medicare,ENGLISH,MARRIED,WHITE,2150-03-01 08:00:00,2150-03-01 10:30:00,0
3,300,2151-12-30 10:00:00,2152-01-01 09:00:00,2152-01-01 09:00:00,URGENT,P1,ER,DIED,Medicaid,ENGLISH,,BLACK,,,1
"""
DIAGNOSES = """subject_id,hadm_id,seq_num,icd_code,icd_version
1,100,1,I10,10
1,999,1,E119,10
3,300,1,,10
"""
LABEVENTS = """labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,storetime,value,valuenum,valueuom,ref_range_lower,ref_range_upper,flag,priority,comments
10,1,100,5,50912,,2150-03-02 06:00:00,,1.1,1.1,mg/dL,,,,,
11,1,100,5,50912,,2150-13-45 25:00:00,,1.2,1.2,mg/dL,,,,,
12,,100,5,50912,,2150-03-02 06:00:00,,1.3,1.3,mg/dL,,,,,
13,4,,5,50912,,2150-03-02 06:00:00,,1.4,1.4,mg/dL,,,,,
14,1,100,5,50912,,2100-03-02 06:00:00,,1.5,1.5,mg/dL,,,,,
15,1,100,5,51000,,2150-03-02 06:00:00,,POSITIVE,,,,,,,
"""
CHARTEVENTS = """subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,valueuom,warning
1,100,7,,2150-03-02 07:00:00,,220045,80,80,bpm,0
"""


@pytest.fixture(scope="module")
def result(spark, tmp_path_factory) -> tuple[Path, dict, pd.DataFrame, pd.DataFrame]:  # type: ignore[no-untyped-def]
    from ehrfm.ingest.mimic.ingest import ingest_mimic

    # the release in the path becomes dataset_version, as PhysioNet lays out physionet.org/files/mimiciv/3.1/
    root = tmp_path_factory.mktemp("mimic_tiny") / "mimiciv" / "3.1"
    for sub, name, text in [
        ("hosp", "patients", PATIENTS),
        ("hosp", "admissions", ADMISSIONS),
        ("hosp", "diagnoses_icd", DIAGNOSES),
        ("hosp", "labevents", LABEVENTS),
        ("icu", "chartevents", CHARTEVENTS),
    ]:
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / f"{name}.csv").write_text(text)
    out = root / "out"
    summary = ingest_mimic(spark, str(root), str(out))
    return out, summary, pd.read_parquet(out / "data"), pd.read_parquet(out / "rejects")


def test_each_bad_record_is_a_reject_with_its_row(result: tuple[Path, dict, pd.DataFrame,
                                                                pd.DataFrame]) -> None:
    _, _, _, rej = result
    lab = rej[rej.resource_type == "labevents"].set_index("record_index")
    assert lab.loc[1, "reason"].startswith("unparseable time (charttime)") and lab.loc[1,
                                                                                       "field"] == "charttime"
    assert lab.loc[2, "reason"] == "missing or non-integer subject_id" and lab.loc[2, "field"] == "subject_id"
    assert lab.loc[3, "reason"].startswith("subject_id not in patients")
    assert lab.loc[4, "reason"] == "time before birth"
    assert list(lab.resource_id) == ["11", "12", "13", "14"] and len(lab) == 4
    assert lab.source_file.str.endswith("hosp/labevents.csv").all()
    dx = rej[rej.resource_type == "diagnoses_icd"].set_index("record_index")
    assert lab.index.is_unique and sorted(dx.index) == [1, 2]
    assert dx.loc[1, "reason"] == "missing time (_dischtime)"  # hadm 999 has no admission
    assert dx.loc[2, "reason"] == "missing value for code icd_code" and dx.loc[2, "field"] == "icd_code"


def test_good_records_become_events(result: tuple[Path, dict, pd.DataFrame, pd.DataFrame]) -> None:
    _, summary, ev, rej = result
    labs = ev[ev.source == "mimic:labevents"]
    assert sorted(labs.code) == ["LAB//50912//mg/dL", "LAB//51000//UNK"]  # a null unit is the part UNK
    num = labs[labs.code == "LAB//50912//mg/dL"].iloc[0]
    assert num.numeric_value == pytest.approx(1.1) and num.unit == "mg/dL" and num.encounter_id == "100"
    assert labs[labs.code == "LAB//51000//UNK"].text_value.tolist() == ["POSITIVE"]
    assert labs[labs.code == "LAB//51000//UNK"].unit.isna().all()  # the unit column stays null
    chart = ev[ev.source == "mimic:chartevents"]
    assert chart.code.tolist() == ["LAB//220045//bpm"] and chart.numeric_value.tolist() == [80.0]
    assert set(ev[ev.code.str.startswith("GENDER//")].code) == {"GENDER//F", "GENDER//UNK", "GENDER//M"}
    death = ev[ev.code == "MEDS_DEATH"].set_index("subject_id").time
    assert death.loc[1] == pd.Timestamp("2151-06-01 23:59:59")  # dod only
    assert death.loc[3] == pd.Timestamp("2152-01-01 09:00:00")  # in-hospital deathtime wins over dod
    assert ev[ev.code == "DIAGNOSIS//ICD//10//I10"].time.tolist() == [pd.Timestamp("2150-03-05 12:00:00")]
    assert (ev.code == "ED_REGISTRATION").sum() == 1  # null edregtime is no event and no reject
    ed = summary["rules"]["admissions:ED_REGISTRATION"]
    assert ed["events"] == 1 and ed["not_applicable"] == 1 and not ed["rejects"]
    assert summary["tables"]["icustays"]["absent"] and summary["tables"]["labevents"]["rows"] == 6
    # reconciliation: every labevents row is one event or one reject
    assert len(labs) + (rej.resource_type == "labevents").sum() == 6


def test_dataset_version_is_the_release_in_the_input_path(result: tuple[Path, dict, pd.DataFrame,
                                                                      pd.DataFrame]) -> None:
    out, summary, _, _ = result
    assert json.loads((out / "metadata" / "dataset.json").read_text())["dataset_version"] == "3.1"
    assert summary["dataset_version"] == {"value": "3.1", "from": "input path"}


def test_rules_table_is_checked(tmp_path: Path) -> None:
    rules = load_rules()
    assert {r.table for r in rules.events} <= set(rules.tables)
    assert rules.tables["chartevents"].optional and not rules.tables["patients"].optional
    bad = tmp_path / "rules.yaml"
    bad.write_text("tables: {patients: {path: hosp/patients, id: subject_id}}\nevents:\n  - {table: nope, "
                   "code: X}\n")
    with pytest.raises(ValueError, match="unknown table 'nope'"):
        load_rules(bad)
    head = "tables: {patients: {path: hosp/patients, id: subject_id}}\nevents: []\ndescriptions:\n  - "
    for entry, message in [
        ('{match: "X(", description: x}', "is not a regex"),
        ('{match: "X//(?P<a>.*)", description: x, derive: nope}', "derive='nope'"),
        ('{match: "X//(?P<a>.*)", description: x, dictionary: {path: d, key: [b]}}', "names a group"),
        ('{match: "X//(?P<a>.*)", description: x, fallback: "{b}"}', "not a group of its match"),
        ('{match: "X//(?P<a>.*)"}', "neither description nor parents"),
    ]:
        bad.write_text(head + entry + "\n")
        with pytest.raises(ValueError, match=re.escape(message)):
            load_rules(bad)
