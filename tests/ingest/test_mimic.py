"""`ehrfm ingest mimic` on the real MIMIC-IV demo (100 patients): counts, timing rules, rejects, validation.

One ingest per session (``mimic_demo_ingested`` in conftest.py, shared with test_mimic_meds_etl.py); every
test reads its output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ehrfm.ingest.summary import make_summary, mimic_counts
from ehrfm.ingest.validate import validate_meds_dataset

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture
def ingested(mimic_demo_ingested: tuple[Path, dict, pd.DataFrame]) -> tuple[Path, dict, pd.DataFrame]:
    return mimic_demo_ingested


def _csv(root: Path, table: str) -> pd.DataFrame:
    return pd.read_csv(root / f"{table}.csv.gz", dtype=str, keep_default_na=False, na_values=[""])


def test_headline_counts(ingested: tuple[Path, dict, pd.DataFrame]) -> None:
    _, summary, ev = ingested
    assert summary["subjects"] == 100 and ev.subject_id.nunique() == 100
    admissions = ev[ev.code.str.startswith("HOSPITAL_ADMISSION//")]
    assert len(admissions) == 275 and admissions.encounter_id.nunique() == 275
    death = ev[ev.code == "MEDS_DEATH"]
    assert death.subject_id.nunique() == 31 and len(death) == 31  # exactly one death per deceased subject
    assert (death.source == "mimic:admissions").sum() == 15  # in-hospital deaths keep their deathtime
    labs = ev[ev.source == "mimic:labevents"]
    assert labs.code.str.startswith("LAB//").all()
    assert labs.numeric_value.notna().sum() == 95_246
    assert len(labs) == 107_727  # every labevents row became an event
    assert labs[labs.text_value.notna()].numeric_value.isna().all()  # text only where there is no number
    assert (ev.code == "MEDS_BIRTH").sum() == 100 and ev.code.str.startswith("GENDER//").sum() == 100
    assert ev[ev.time.isna()].code.str.startswith("GENDER//").all()  # the only static rows
    # events dated after the subject's death are kept, and counted per source (pandas here, pyarrow in
    # the writer)
    dies = death.groupby("subject_id").time.min().rename("death")
    timed = ev.join(dies, on="subject_id", how="inner")
    late = timed[timed.time > timed.death].source.value_counts().to_dict()
    print(f"after death: {summary['after_death']}")
    assert summary["after_death"] == {"total": sum(late.values()), "by_source": dict(sorted(late.items()))}
    # ... and flagged, row by row, in the shards' after_death column
    flagged = ev.join(dies, on="subject_id", how="left")
    expected = flagged.time.notna() & flagged.death.notna() & (flagged.time > flagged.death)
    assert str(ev["after_death"].dtype) == "int8" and (ev["after_death"].astype(bool) == expected).all()
    assert int(ev["after_death"].sum()) == summary["after_death"]["total"] == 86


def test_diagnoses_and_procedures_are_timed_at_discharge(ingested: tuple[Path, dict, pd.DataFrame]) -> None:
    _, _, ev = ingested
    end = ev[ev.code.str.startswith("HOSPITAL_DISCHARGE//")].set_index("encounter_id").time
    start = ev[ev.code.str.startswith("HOSPITAL_ADMISSION//")].set_index("encounter_id").time
    coded = ev[ev.code.str.match(r"^(DIAGNOSIS|PROCEDURE)//ICD//")]
    assert len(coded) == 4_506 + 722
    assert (coded.time.values == end.loc[coded.encounter_id].values).all()
    assert (coded.time.values > start.loc[coded.encounter_id].values).all()


def test_birth_and_death_follow_the_conventions(ingested: tuple[Path, dict, pd.DataFrame],
                                                mimic_demo: Path) -> None:
    _, _, ev = ingested
    pat = _csv(mimic_demo / "hosp", "patients").set_index("subject_id")
    adm = _csv(mimic_demo / "hosp", "admissions")
    birth = ev[ev.code == "MEDS_BIRTH"].set_index("subject_id").time
    for sid, t in birth.items():
        year = int(pat.loc[str(sid), "anchor_year"]) - int(pat.loc[str(sid), "anchor_age"])
        assert t == pd.Timestamp(year=year, month=1, day=1)
    death = ev[ev.code == "MEDS_DEATH"].set_index("subject_id")
    in_hosp = adm.dropna(subset=["deathtime"]).set_index("subject_id").deathtime
    for sid, row in death.iterrows():
        if str(sid) in in_hosp.index:
            assert row.time == pd.Timestamp(in_hosp.loc[str(sid)])
        else:  # date of death only: 23:59:59 that day
            assert row.time == pd.Timestamp(pat.loc[str(sid), "dod"]) + pd.Timedelta(hours=23, minutes=59,
                                                                                     seconds=59)


def test_omr_blood_pressure_is_split(ingested: tuple[Path, dict, pd.DataFrame]) -> None:
    _, _, ev = ingested
    sys_bp = ev[ev.code == "OMR//Blood Pressure//SYSTOLIC"]
    dia_bp = ev[ev.code == "OMR//Blood Pressure//DIASTOLIC"]
    assert len(sys_bp) == len(dia_bp) > 0 and sys_bp.numeric_value.notna().all()
    assert (sys_bp.numeric_value.values > dia_bp.numeric_value.values).mean() > 0.95
    assert (ev[ev.source == "mimic:omr"].time.dt.strftime("%H:%M:%S") == "23:59:59").all()


def test_every_row_is_accounted_for_and_null_code_parts_are_unk(ingested: tuple[Path, dict, pd.DataFrame],
                                                                mimic_demo: Path) -> None:
    out, summary, ev = ingested
    rej = pd.read_parquet(out / "rejects")
    assert len(rej) == summary["rejects"]  # 0 on the demo: rejects are tested on hand-made rows
    emar = _csv(mimic_demo / "hosp", "emar")
    # a null medication is a code part "UNK" (the ETL's `?? 'UNK'`), not a reject: every emar row is an event
    em = ev[ev.source == "mimic:emar"]
    assert len(em) == len(emar) == summary["tables"]["emar"]["rows"]
    assert em.code.str.startswith("MEDICATION//UNK//").sum() == emar.medication.isna().sum() > 0
    stored = json.loads((out / "summary.json").read_text())
    assert stored["tables"]["chartevents"]["absent"] is True  # tolerated: not in the demo
    assert stored["rules"]["labevents:LAB//{itemid}//{valueuom}"]["events"] == 107_727
    for name, rule in stored["rules"].items():  # per rule: rows mapped + rejected + not applicable = rows
        rows = stored["tables"][rule["table"]]["rows"]
        accounted = rule["rows_mapped"] + rule["rows_rejected"] + rule.get("not_applicable", 0)
        assert accounted == rows, name
        if rule["table"] != "omr":  # one event (or reject) per row
            assert rule["events"] == rule["rows_mapped"], name
            assert sum(rule["rejects"].values()) == rule["rows_rejected"], name
    omr = stored["rules"]["omr:OMR//{_name}"]  # a blood pressure row is two events and one row
    omr_rows = _csv(mimic_demo / "hosp", "omr")
    pairs = omr_rows.result_value.str.strip().str.fullmatch(r"[0-9]+(\.[0-9]+)?/[0-9]+(\.[0-9]+)?").sum()
    assert pairs > 0 and omr["rows_mapped"] == len(omr_rows) and omr["events"] == len(omr_rows) + pairs
    assert make_summary("mimic", stored, mimic_counts(stored), str(out), 0.0).reconciled  # no warning


def test_codes_have_descriptions_and_dataset_validates(ingested: tuple[Path, dict, pd.DataFrame]) -> None:
    out, summary, ev = ingested
    codes = pd.read_parquet(out / "metadata" / "codes.parquet").set_index("code")
    assert set(codes.index) == set(ev.code)
    assert codes.description.notna().all()  # test_mimic_meds_etl.py checks them in detail
    assert codes.loc["LAB//50912//mg/dL", "description"].startswith("Creatinine")
    report = validate_meds_dataset(str(out))
    assert report.events == summary["events"] == len(ev) and report.subjects == 100
