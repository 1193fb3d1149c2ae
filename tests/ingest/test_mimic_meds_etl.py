"""Our MIMIC-IV demo ingest against the MEDS MIMIC-IV ETL's own output for the same 100 patients
(../shared/data/mimic-iv-demo-meds: ETL v0.0.1 on MIMIC-IV demo 2.2, see its SOURCE.md).

For every code family both produce, the multiset of (subject_id, code) is equal, and so is (subject_id, code,
time) where both read the same source column; numeric values agree. The differences, measured on the demo
and each asserted exactly below:

- Whitespace: the ETL keeps code parts as the CSV spells them; we trim them and write a blank part as UNK
  (a unit of " " is no unit). The reference codes are normalized the same way before comparing; this touches
  339 labevents rows (valueuom " ") and 275 emar rows (medication or event_txt with outer spaces).
- Exact duplicates: the ETL drops rows equal in all of its columns; we keep one event per source row (nothing
  dropped silently; it also keeps the 95,246 numeric labs). Ours has 178 more labevents rows, 1 more
  ED_REGISTRATION and ED_OUT (two admissions share one ED visit), 33 more PROCEDURE//START, 31 more
  PROCEDURE//END and 8,578 more SUBJECT_WEIGHT_AT_INFUSION//KG (one per inputevents row). Every extra row
  repeats a (subject_id, code, time) the ETL has, and no reference row is missing.
- Times, by design: PROCEDURE//ICD at the admission's dischtime (coded after the stay; the ETL v0.0.1 uses
  procedures_icd.chartdate, its later releases dischtime): the codes agree, 722 of 722 times differ.
  MEDS_DEATH from patients.dod (a date; 16 of 31 deaths): 23:59:59 that day, the ETL 00:00; the 15
  in-hospital deaths agree to the minute.
- Values: within 1e-6 relative. We parse the CSV text straight to float32; the ETL goes through float64, and
  the double rounding moves 8 INFUSION_START rates and 114 INFUSION_END amounts by one float32 ulp.
- Cannot match: icu/chartevents is not in our demo copy (the reference has 668,862 LAB events with an itemid
  of 220000 or more; ours none). Not mapped by us: hosp/drgcodes (DRG//, 454 rows), hosp/hcpcsevents
  (HCPCS//, 58), hosp/pharmacy (MEDICATION//START|STOP//, 27,861; we map hosp/prescriptions instead) and
  omr as bare result names (2,838; we write OMR//<name>, blood pressure split in two).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

Select = Callable[[pd.DataFrame], "pd.Series[bool]"]
KEY = ["subject_id", "code", "time"]


def _prefix(p: str) -> Select:
    return lambda df: df["code"].str.startswith(p)


def _exact(c: str) -> Select:
    return lambda df: df["code"] == c


def _source(s: str) -> Select:
    return lambda df: df["source"] == s


def _ref_lab(df: pd.DataFrame) -> pd.Series[bool]:  # labevents itemids are below 220000 (chartevents above)
    item = pd.to_numeric(df["code"].str.split("//").str[1], errors="coerce")
    return df["code"].str.startswith("LAB//") & (item < 220_000)


def _ref_emar(df: pd.DataFrame) -> pd.Series[bool]:  # pharmacy writes MEDICATION//START|STOP//
    return df["code"].str.startswith("MEDICATION//") & ~df["code"].str.match("MEDICATION//(?:START|STOP)//")


# family: (our rows, reference rows, rows only we have, times compared)
FAMILIES: dict[str, tuple[Select, Select, int, bool]] = {
    "HOSPITAL_ADMISSION": (_prefix("HOSPITAL_ADMISSION//"), _prefix("HOSPITAL_ADMISSION//"), 0, True),
    "HOSPITAL_DISCHARGE": (_prefix("HOSPITAL_DISCHARGE//"), _prefix("HOSPITAL_DISCHARGE//"), 0, True),
    "ED_REGISTRATION": (_exact("ED_REGISTRATION"), _exact("ED_REGISTRATION"), 1, True),
    "ED_OUT": (_exact("ED_OUT"), _exact("ED_OUT"), 1, True),
    "DIAGNOSIS": (_prefix("DIAGNOSIS//ICD//"), _prefix("DIAGNOSIS//ICD//"), 0, True),
    "PROCEDURE//ICD": (_prefix("PROCEDURE//ICD//"), _prefix("PROCEDURE//ICD//"), 0, False),
    "PROCEDURE//START": (_prefix("PROCEDURE//START//"), _prefix("PROCEDURE//START//"), 33, True),
    "PROCEDURE//END": (_prefix("PROCEDURE//END//"), _prefix("PROCEDURE//END//"), 31, True),
    "LAB (labevents)": (_source("mimic:labevents"), _ref_lab, 178, True),
    "ICU_ADMISSION": (_prefix("ICU_ADMISSION//"), _prefix("ICU_ADMISSION//"), 0, True),
    "ICU_DISCHARGE": (_prefix("ICU_DISCHARGE//"), _prefix("ICU_DISCHARGE//"), 0, True),
    "TRANSFER_TO": (_prefix("TRANSFER_TO//"), _prefix("TRANSFER_TO//"), 0, True),
    "MEDICATION (emar)": (_source("mimic:emar"), _ref_emar, 0, True),
    "SUBJECT_FLUID_OUTPUT": (_prefix("SUBJECT_FLUID_OUTPUT//"), _prefix("SUBJECT_FLUID_OUTPUT//"), 0, True),
    "INFUSION_START": (_prefix("INFUSION_START//"), _prefix("INFUSION_START//"), 0, True),
    "INFUSION_END": (_prefix("INFUSION_END//"), _prefix("INFUSION_END//"), 0, True),
    "SUBJECT_WEIGHT_AT_INFUSION": (_exact("SUBJECT_WEIGHT_AT_INFUSION//KG"),
                                   _exact("SUBJECT_WEIGHT_AT_INFUSION//KG"), 8_578, True),
    "MEDS_BIRTH": (_exact("MEDS_BIRTH"), _exact("MEDS_BIRTH"), 0, True),
    "MEDS_DEATH": (_exact("MEDS_DEATH"), _exact("MEDS_DEATH"), 0, False),  # see test_death_times
    "GENDER": (_prefix("GENDER//"), _prefix("GENDER//"), 0, True),  # static: time null in both
}
# reference rows no family above compares, and why (module docstring): (selector, rows)
NOT_COMPARED: dict[str, tuple[Select, int]] = {
    "LAB (chartevents: not in our demo copy)": (lambda df: _prefix("LAB//")(df) & ~_ref_lab(df), 668_862),
    "DRG (drgcodes: not mapped)": (_prefix("DRG//"), 454),
    "HCPCS (hcpcsevents: not mapped)": (_prefix("HCPCS//"), 58),
    "MEDICATION//START|STOP (pharmacy: not mapped)": (lambda df: df["code"].str.match(
        "MEDICATION//(?:START|STOP)//"), 27_861),
    "omr result names (we write OMR//<name>)": (lambda df: df["code"].str.match(
        r"(?:Blood Pressure|Weight \(Lbs\)|BMI \(kg/m2\)|Height \(Inches\))"), 2_838),
}


def _normalize(code: str) -> str:
    """The reference code as we would spell it: parts trimmed, a blank part UNK."""
    return "//".join(p.strip() or "UNK" for p in code.split("//"))


@pytest.fixture(scope="module")
def reference(mimic_demo_meds: Path) -> pd.DataFrame:
    ref = pd.read_parquet(mimic_demo_meds, columns=["subject_id", "time", "code", "value"])
    raw = ref["code"]
    ref["code"] = raw.map(_normalize)
    ref["renamed"] = ref["code"] != raw
    return ref.rename(columns={"value": "numeric_value"})


@pytest.fixture(scope="module")
def ours(mimic_demo_ingested: tuple[Path, dict[str, Any], pd.DataFrame]) -> pd.DataFrame:
    return mimic_demo_ingested[2]


def _multiset(df: pd.DataFrame, cols: list[str]) -> Counter[tuple[object, ...]]:
    return Counter(zip(*(df[c].astype(object).where(df[c].notna(), None) for c in cols), strict=True))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_matches_the_etl(family: str, ours: pd.DataFrame, reference: pd.DataFrame) -> None:
    mine, theirs, extra, timed = FAMILIES[family]
    o, r = ours[mine(ours)], reference[theirs(reference)]
    assert len(r) > 0 and len(o) == len(r) + extra
    cols = KEY if timed else KEY[:2]
    a, b = _multiset(o, cols), _multiset(r, cols)
    print(f"{family}: ours {len(o):,}, ETL {len(r):,}; only ours {sum((a - b).values())}, only ETL "
          f"{sum((b - a).values())}")
    assert not b - a  # no reference event is missing
    assert sum((a - b).values()) == extra and set(a) == set(b)  # extra rows only repeat events both have
    if family == "PROCEDURE//ICD":  # by design (docstring): every time differs, none is shared
        assert not _multiset(o, KEY) & _multiset(r, KEY)


def test_whitespace_normalization_is_as_measured(reference: pd.DataFrame) -> None:
    renamed = reference[reference["renamed"]]
    assert _ref_lab(renamed).sum() == 339 and _ref_emar(renamed).sum() == 275


def test_every_reference_event_is_compared_or_documented(reference: pd.DataFrame) -> None:
    covered = pd.Series(False, index=reference.index)
    for mine_ref in (sel for _, sel, _, _ in FAMILIES.values()):
        covered |= mine_ref(reference)
    for why, (sel, rows) in NOT_COMPARED.items():
        hit = sel(reference)
        assert hit.sum() == rows, why
        assert not (hit & covered).any(), why
        covered |= hit
    assert covered.all(), reference.loc[~covered, "code"].str.split("//").str[0].value_counts().to_dict()


def test_death_times(ours: pd.DataFrame, reference: pd.DataFrame) -> None:
    o = ours[ours["code"] == "MEDS_DEATH"].set_index("subject_id")
    r = reference[reference["code"] == "MEDS_DEATH"].set_index("subject_id")["time"]
    assert o.index.is_unique and r.index.is_unique and set(o.index) == set(r.index)
    in_hospital = o["source"] == "mimic:admissions"
    assert in_hospital.sum() == 15 and len(o) == 31
    assert (o.loc[in_hospital, "time"] == r[o.index[in_hospital]]).all()
    date_only = o.loc[~in_hospital, "time"]
    assert (date_only == r[date_only.index] + pd.Timedelta(hours=23, minutes=59, seconds=59)).all()


@pytest.mark.parametrize("family", ["LAB (labevents)", "SUBJECT_FLUID_OUTPUT", "INFUSION_START",
                                    "INFUSION_END", "SUBJECT_WEIGHT_AT_INFUSION"])
def test_numeric_values_agree(family: str, ours: pd.DataFrame, reference: pd.DataFrame) -> None:
    mine, theirs, _, _ = FAMILIES[family]
    cols = [*KEY, "numeric_value"]
    # distinct rows: the ETL dropped its duplicates; sorted, so equal keys pair up value by value
    o = ours.loc[mine(ours), cols].drop_duplicates().sort_values(cols)
    r = reference.loc[theirs(reference), cols].drop_duplicates().sort_values(cols)
    assert len(o) == len(r) and (o[KEY].to_numpy() == r[KEY].to_numpy()).all()
    a, b = o["numeric_value"].to_numpy(np.float64), r["numeric_value"].to_numpy(np.float64)
    assert np.isclose(a, b, rtol=1e-6, equal_nan=True).all()
    print(f"{family}: {int((a != b).sum() - (np.isnan(a) & np.isnan(b)).sum())} values one float32 ulp apart")


def test_codes_are_described_and_icd_codes_have_parents(
        mimic_demo_ingested: tuple[Path, dict[str, Any], pd.DataFrame], mimic_demo: Path) -> None:
    out, _, ev = mimic_demo_ingested
    codes = pd.read_parquet(out / "metadata" / "codes.parquet").set_index("code")
    assert set(codes.index) == set(ev["code"]) and codes["description"].notna().all()
    icd = codes[codes.index.str.match(r"(?:DIAGNOSIS|PROCEDURE)//ICD//")]
    assert len(icd) > 1000 and icd["parent_codes"].map(lambda p: p is not None and len(p) == 2).all()
    assert codes.loc[~codes.index.isin(icd.index), "parent_codes"].isna().all()  # v2.2 has no loinc_code

    def title(table: str, version: str, code: str) -> str:
        d = pd.read_csv(mimic_demo / "hosp" / f"{table}.csv.gz", dtype=str)
        return str(d.loc[(d.icd_version == version) & (d.icd_code == code), "long_title"].item())

    for code, table, parents in [
        ("DIAGNOSIS//ICD//9//4019", "d_icd_diagnoses", ["ICD9CM/390-459", "ICD9CM/401.9"]),
        ("DIAGNOSIS//ICD//10//I10", "d_icd_diagnoses", ["ICD10CM/I00-I99", "ICD10CM/I10"]),
        ("DIAGNOSIS//ICD//9//E8497", "d_icd_diagnoses", ["ICD9CM/E000-E999", "ICD9CM/E849.7"]),
        ("PROCEDURE//ICD//9//3893", "d_icd_procedures", ["ICD9Proc/35-39", "ICD9Proc/38.93"]),
        ("PROCEDURE//ICD//10//02HV33Z", "d_icd_procedures", ["ICD10PCS/0", "ICD10PCS/02HV33Z"]),
    ]:
        _, _, version, icd_code = code.split("//")
        assert codes.loc[code, "description"] == title(table, version, icd_code)
        assert list(codes["parent_codes"][code]) == parents
    lab = pd.read_csv(mimic_demo / "hosp" / "d_labitems.csv.gz", dtype=str).set_index("itemid").loc["50912"]
    assert codes.loc["LAB//50912//mg/dL", "description"] == (
        f"{lab.label} ({lab.fluid}, {lab.category}), unit mg/dL")
    admission = codes.index[codes.index.str.startswith("HOSPITAL_ADMISSION//")][0]
    _, kind, where = admission.split("//")
    assert codes.loc[admission, "description"] == f"Hospital admission ({kind}, from {where})"
    assert str(codes.at["MEDS_DEATH", "description"]).startswith("Death")


def test_dataset_version_without_flag_or_release_in_the_path(
        mimic_demo_ingested: tuple[Path, dict[str, Any], pd.DataFrame]) -> None:
    import json

    out, summary, _ = mimic_demo_ingested
    # ../shared/data/mimic-iv-demo names no release: an honest "unknown", never the ingest date
    assert json.loads((out / "metadata" / "dataset.json").read_text())["dataset_version"] == "unknown"
    assert summary["dataset_version"] == {"value": None, "from": "none (written as unknown)"}
