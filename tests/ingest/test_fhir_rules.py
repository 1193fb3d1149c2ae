"""FHIR mapping tables: encounter classes across versions/systems, code systems, ids, times."""

from __future__ import annotations

import hashlib

import pytest

from ehrfm.ingest.fhir.encounters import encounter_class
from ehrfm.ingest.fhir.ids import subject_id_for
from ehrfm.ingest.fhir.rules import load_rules
from ehrfm.ingest.fhir.times import TimeParseError, parse_fhir_time

RULES = load_rules()
V3 = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


@pytest.mark.parametrize(
    ("code", "klass"),
    [("IMP", "INPATIENT"), ("ACUTE", "INPATIENT"), ("NONAC", "INPATIENT"), ("EMER", "EMERGENCY"),
     ("AMB", "AMBULATORY"), ("OBSENC", "OBSERVATION"), ("VR", "VIRTUAL"), ("HH", "HOME"),
     ("SS", "OBSERVATION")],
)
def test_v3_actcode_r4_coding(code: str, klass: str) -> None:
    assert encounter_class({"class": {"system": V3, "code": code}}, RULES) == klass


@pytest.mark.parametrize(
    ("word", "klass"),
    [("inpatient", "INPATIENT"), ("emergency", "EMERGENCY"), ("outpatient", "AMBULATORY"),
     ("ambulatory", "AMBULATORY"), ("wellness", "AMBULATORY"), ("urgentcare", "AMBULATORY"),
     ("Urgent-Care", "AMBULATORY"), ("ICU", "ICU"), ("telehealth", "VIRTUAL"), ("home health", "HOME")],
)
def test_bare_strings_and_other_systems(word: str, klass: str) -> None:
    # DSTU2-style bare string, and a Coding from a local system
    assert encounter_class({"class": word}, RULES) == klass
    assert encounter_class({"class": {"system": "http://example.org/enc-class", "code": word}},
                           RULES) == klass


def test_stu3_r4_r5_shapes() -> None:
    stu3 = {"resourceType": "Encounter", "class": {"system": "http://hl7.org/fhir/v3/ActCode", "code": "IMP"}}
    r5 = {"resourceType": "Encounter", "class": [{"coding": [{"system": V3, "code": "EMER"}]}]}
    r5_text = {"resourceType": "Encounter", "class": [{"text": "Emergency department visit"}]}
    assert encounter_class(stu3, RULES) == "INPATIENT"
    assert encounter_class(r5, RULES) == "EMERGENCY"
    assert encounter_class(r5_text, RULES) == "EMERGENCY"


def test_type_and_service_type_fallback() -> None:
    by_type = {"type": [{"coding": [{"system": "http://snomed.info/sct", "code": "183452005",
                                      "display": "Emergency hospital admission"}]}]}
    by_service_r4 = {"serviceType": {"text": "Intensive care unit"}}
    by_service_r5 = {"serviceType": [{"concept": {"text": "Telemedicine consult"}}]}
    unknown_code = {"class": {"system": V3, "code": "XYZ"}}
    assert encounter_class(by_type, RULES) == "EMERGENCY"
    assert encounter_class(by_service_r4, RULES) == "ICU"
    assert encounter_class(by_service_r5, RULES) == "VIRTUAL"
    assert encounter_class(unknown_code, RULES) == "OTHER"
    assert encounter_class({}, RULES) == "OTHER"


def test_code_system_short_names() -> None:
    assert RULES.system_name("http://loinc.org") == "LOINC"
    assert RULES.system_name("http://hl7.org/fhir/sid/icd-10-cm") == "ICD//10"
    assert RULES.system_name("http://hl7.org/fhir/sid/icd-9-cm") == "ICD//9"
    assert RULES.system_name("http://www.nlm.nih.gov/research/umls/rxnorm") == "RXNORM"
    assert RULES.system_name("http://hl7.org/fhir/sid/cvx") == "CVX"
    assert RULES.system_name("http://example.org/fhir/CodeSystem/custom-lab") == "CUSTOM-LAB"
    assert RULES.system_name(None) == "UNKNOWN"


def test_subject_id_for() -> None:
    assert subject_id_for("12345") == 12345
    big = str(2**63)  # not < 2**63: hashed
    uid = "018f428e-34f6-4707-8009-5ad742f901e7"
    expected = int.from_bytes(hashlib.blake2b(uid.encode()).digest()[:8], "big") >> 1
    assert subject_id_for(uid) == expected
    assert 0 <= subject_id_for(big) < 2**63 and subject_id_for(big) != 2**63
    with pytest.raises(ValueError, match="Patient logical id"):
        subject_id_for("")


@pytest.mark.parametrize(
    ("text", "iso"),
    [("2019", "2019-01-01T00:00:00"), ("2019-05", "2019-05-01T00:00:00"),
     ("2019-05-31", "2019-05-31T00:00:00"),
     ("2019-05-31T23:37:54+00:00", "2019-05-31T23:37:54"), ("2019-05-31T23:37:54Z", "2019-05-31T23:37:54"),
     ("2019-05-31T23:37:54-05:00", "2019-06-01T04:37:54"),
     ("2019-05-31T01:00:00.123456+02:00", "2019-05-30T23:00:00.123456"),
     ("2019-05-31T23:37:54.530+00:00", "2019-05-31T23:37:54.530000"),
     ("2019-05-31T23:37:54", "2019-05-31T23:37:54")],
)
def test_times_to_naive_utc_micros(text: str, iso: str) -> None:
    import datetime as dt

    expect = (dt.datetime.fromisoformat(iso) - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)
    assert parse_fhir_time(text) == expect


@pytest.mark.parametrize("bad",
                         ["2019-02-30", "2019-13-01", "yesterday", "2019/05/31", "2019-05-31T25:00:00Z"])
def test_bad_times_raise(bad: str) -> None:
    with pytest.raises(TimeParseError, match="2019|yesterday"):
        parse_fhir_time(bad)
