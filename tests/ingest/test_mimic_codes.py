"""metadata/codes.parquet rules for MIMIC-IV (ehrfm.ingest.mimic.codes), without Spark: ICD parents in the
ETL's dotted form, chapter ranges, dictionary descriptions and fallbacks, parents added up across rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrfm.ingest.mimic.codes import (
    chapter_of,
    code_metadata,
    derive_icd_diagnosis,
    derive_icd_procedure,
    describe,
    fill,
    icd_chapters,
)
from ehrfm.ingest.mimic.rules import Dictionary, load_rules


@pytest.mark.parametrize("version, code, parent, chapter", [
    ("9", "25000", "ICD9CM/250.00", "ICD9CM/240-279"),
    ("9", "4019", "ICD9CM/401.9", "ICD9CM/390-459"),
    ("9", "E8497", "ICD9CM/E849.7", "ICD9CM/E000-E999"),  # E codes: the dot after four characters
    ("9", "E849", "ICD9CM/E849", "ICD9CM/E000-E999"),
    ("9", "V1582", "ICD9CM/V15.82", "ICD9CM/V01-V91"),
    ("9", "0090", "ICD9CM/009.0", "ICD9CM/001-139"),  # leading zeros kept
    ("9", "401", "ICD9CM/401", "ICD9CM/390-459"),  # a bare category has no dot
    ("10", "E119", "ICD10CM/E11.9", "ICD10CM/E00-E89"),
    ("10", "I10", "ICD10CM/I10", "ICD10CM/I00-I99"),
    ("10", "D3A010", "ICD10CM/D3A.010", "ICD10CM/C00-D49"),  # letter inside the category
    ("10", "O9A211", "ICD10CM/O9A.211", "ICD10CM/O00-O9A"),  # the chapter's last category
    ("10", "Z3A01", "ICD10CM/Z3A.01", "ICD10CM/Z00-Z99"),
])
def test_icd_diagnosis_parents(version: str, code: str, parent: str, chapter: str) -> None:
    assert derive_icd_diagnosis({"icd_version": version, "icd_code": code}) == {
        "_icd_parent": parent, "_icd_chapter": chapter}


@pytest.mark.parametrize("version, code, parent, chapter", [
    ("9", "5491", "ICD9Proc/54.91", "ICD9Proc/42-54"),
    ("9", "0039", "ICD9Proc/00.39", "ICD9Proc/00"),
    ("9", "17", "ICD9Proc/17", "ICD9Proc/17"),
    ("10", "0DTJ4ZZ", "ICD10PCS/0DTJ4ZZ", "ICD10PCS/0"),
    ("10", "B2111ZZ", "ICD10PCS/B2111ZZ", "ICD10PCS/B"),
])
def test_icd_procedure_parents(version: str, code: str, parent: str, chapter: str) -> None:
    assert derive_icd_procedure({"icd_version": version, "icd_code": code}) == {
        "_icd_parent": parent, "_icd_chapter": chapter}


def test_other_versions_derive_nothing_and_unknown_ranges_no_chapter() -> None:
    assert derive_icd_diagnosis({"icd_version": "11", "icd_code": "5A11"}) == {}
    assert derive_icd_procedure({"icd_version": "9"}) == {}
    assert derive_icd_diagnosis({"icd_version": "10", "icd_code": "W"}) == {"_icd_parent": "ICD10CM/W"}
    assert chapter_of("ICD10PCS", "E123") is None  # E is not a PCS section


def test_chapter_table_is_well_formed() -> None:
    chapters = icd_chapters()
    assert {c.system for c in chapters} == {"ICD9CM", "ICD10CM", "ICD9Proc", "ICD10PCS"}
    assert sum(c.system == "ICD10CM" for c in chapters) == 22 and sum(c.system == "ICD9CM" for c in
                                                                      chapters) == 19
    for c in chapters:
        assert len(c.first) == len(c.last) and c.first <= c.last and c.title, c
    for a in chapters:  # ranges of one system never overlap
        for b in chapters:
            if a is not b and a.system == b.system and len(a.first) == len(b.first):
                assert a.last < b.first or b.last < a.first, (a, b)
    # every ICD-9 procedure category 00-99 and ICD-9-CM numeric category 001-999 has exactly one chapter
    assert all(chapter_of("ICD9Proc", f"{i:02d}") for i in range(100))
    assert all(chapter_of("ICD9CM", f"{i:03d}") for i in range(1, 1000))


def test_fill() -> None:
    assert fill("Lab {a} ({b})", {"a": "x", "b": "y"}) == "Lab x (y)"
    assert fill("Lab {a} ({b})", {"a": "x", "b": " "}) is None and fill("{c}", {}) is None
    assert fill("MEDS_BIRTH", {}) == "MEDS_BIRTH"


def _lookup(tables: dict[str, dict[tuple[str, ...], dict[str, str]] | None]):  # type: ignore[no-untyped-def]
    def lookup(d: Dictionary) -> dict[tuple[str, ...], dict[str, str]] | None:
        if d.requires is not None and d.path + "+" + d.requires not in tables:
            return None
        return tables.get(d.path if d.requires is None else d.path + "+" + d.requires)

    return lookup


def test_rules_describe_with_dictionaries_fallbacks_and_parents_from_several_rules() -> None:
    rules = load_rules()
    labitems = {("50912",): {"itemid": "50912", "label": "Creatinine", "fluid": "Blood"}}  # no category
    with_loinc = {("50912",): {"itemid": "50912", "loinc_code": "2160-0"}}
    items = {("220045",): {"itemid": "220045", "label": "Heart Rate", "category": "Routine Vital Signs"}}
    lookup = _lookup({"hosp/d_labitems": labitems, "hosp/d_labitems+loinc_code": with_loinc,
                      "icu/d_items": items, "hosp/d_icd_diagnoses": {}})
    codes = {"LAB//50912//mg/dL": None, "LAB//220045//bpm": None, "LAB//1//UNK": None,
             "DIAGNOSIS//ICD//10//I10": None, "MEDICATION//NDC//00338001702": "Sodium Chloride",
             "MEDICATION//NDC//00000000001": None, "MEDICATION//Heparin//UNK": "x", "MEDS_BIRTH": None}
    table = describe(codes, rules, lookup)
    got = {r["code"]: (r["description"], r["parent_codes"]) for r in table.to_pylist()}
    # a dictionary row with a blank cell still describes; the LOINC rule adds its parent
    assert got["LAB//50912//mg/dL"] == ("Creatinine (Blood, ?), unit mg/dL", ["LOINC/2160-0"])
    assert got["LAB//220045//bpm"] == ("Heart Rate (Routine Vital Signs), unit bpm", None)
    assert got["LAB//1//UNK"][0] == "Measurement, item 1 (not in d_labitems or d_items), unit UNK"
    # not in the dictionary: the fallback, and the parents all the same
    assert got["DIAGNOSIS//ICD//10//I10"] == ("ICD-10-CM diagnosis I10 (not in d_icd_diagnoses)",
                                              ["ICD10CM/I00-I99", "ICD10CM/I10"])
    assert got["MEDICATION//NDC//00338001702"][0] == "Prescription: Sodium Chloride (NDC 00338001702)"
    assert got["MEDICATION//NDC//00000000001"][0] == "Prescription, NDC 00000000001"  # no text: fallback
    assert got["MEDICATION//Heparin//UNK"][0] == "Medication administration (eMAR): Heparin, UNK"
    assert got["MEDS_BIRTH"][0].startswith("Birth")
    assert list(got) == sorted(codes)


def test_a_code_no_rule_describes_is_an_error_naming_its_family_only() -> None:
    rules = load_rules()
    with pytest.raises(ValueError, match=r"\{'NEWTHING': 2\}") as err:
        describe({"NEWTHING//secret a": None, "NEWTHING//secret b": None, "MEDS_BIRTH": None}, rules,
                 _lookup({}))
    assert "secret" not in str(err.value)  # code text may be source data: never echoed


def test_dictionaries_are_read_from_the_demo(mimic_demo: Path) -> None:
    table = code_metadata({"DIAGNOSIS//ICD//9//0090": None, "PROCEDURE//ICD//9//0039": None},
                          str(mimic_demo), load_rules())
    rows = {r["code"]: r for r in table.to_pylist()}
    # ICD codes keep their leading zeros through the dictionary read (all columns are strings)
    assert rows["DIAGNOSIS//ICD//9//0090"]["description"] == (
        "Infectious colitis, enteritis, and gastroenteritis")
    assert rows["PROCEDURE//ICD//9//0039"]["description"] == "Other computer assisted surgery"
    assert rows["PROCEDURE//ICD//9//0039"]["parent_codes"] == ["ICD9Proc/00", "ICD9Proc/00.39"]
