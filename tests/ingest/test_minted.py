"""Every code ehrfm mints has a description (the writer's fallback when the source gives none)."""

from __future__ import annotations

import pytest

from ehrfm.ingest.minted import minted_description


@pytest.mark.parametrize(("code", "text"), [
    ("MEDS_BIRTH", "Birth (MEDS_BIRTH: the subject's date of birth)"),
    ("MEDS_DEATH", "Death (MEDS_DEATH: the subject's date of death)"),
    ("ENCOUNTER//INPATIENT//START", "Encounter start (class INPATIENT)"),
    ("ENCOUNTER//EMERGENCY//END", "Encounter end (class EMERGENCY)"),
    ("GENDER//F", "Administrative gender: F"),
    ("RACE//Black or African American", "Race: Black or African American"),
    ("ETHNICITY//Hispanic or Latino", "Ethnicity: Hispanic or Latino"),
])
def test_minted_codes_are_described(code: str, text: str) -> None:
    assert minted_description(code) == text


@pytest.mark.parametrize("code", ["LAB//LOINC//2160-0", "DIAGNOSIS//SNOMED//44054006", "ENCOUNTER//X", ""])
def test_source_codes_are_left_to_the_source(code: str) -> None:
    assert minted_description(code) is None
