"""The pure-Python mapper and the one-patient path on hand-written resources (no Spark)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.ingest.fhir.ids import subject_id_for
from ehrfm.ingest.fhir.mapper import MapContext, map_resource
from ehrfm.ingest.fhir.spark_rows import pending_rows
from ehrfm.schema import EVENTS_SCHEMA, REJECTS_SCHEMA

PID = "p-1"
SID = subject_id_for(PID)
LOINC = "http://loinc.org"


def us(iso: str) -> int:
    return (dt.datetime.fromisoformat(iso) - dt.datetime(1970, 1, 1)) // dt.timedelta(microseconds=1)


def ctx(**kw: Any) -> MapContext:
    return MapContext(max_time_us=us("2030-01-01T00:00:00"), **kw)


def obs(**kw: Any) -> dict[str, Any]:
    base = {"resourceType": "Observation", "id": "o1", "status": "final",
            "subject": {"reference": f"Patient/{PID}"},
            "code": {"coding": [{"system": LOINC, "code": "2345-7", "display": "Glucose"}]},
            "effectiveDateTime": "2020-01-01T10:00:00+01:00"}
    return {**base, **kw}


def test_patient_birth_gender_death_race() -> None:
    pat = {"resourceType": "Patient", "id": PID, "gender": "female", "birthDate": "1950-03-04",
           "deceasedDateTime": "2020-02-02T10:00:00-05:00",
           "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                          "extension": [{"url": "text", "valueString": "Asian"}]},
                         {"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
                          "extension": [{"url": "ombCategory",
                                         "valueCoding": {"display": "Hispanic or Latino"}}]}]}
    events, rejects = map_resource(pat, ctx())
    assert rejects == []
    got = {(e["code"], e["time"]) for e in events}
    assert got == {("GENDER//F", None), ("RACE//Asian", None), ("ETHNICITY//Hispanic or Latino", None),
                   ("MEDS_BIRTH", us("1950-03-04T00:00:00")), ("MEDS_DEATH", us("2020-02-02T15:00:00"))}
    assert {e["subject_id"] for e in events} == {SID} and {e["source"] for e in events} == {"fhir:Patient"}


def test_observation_values_and_components() -> None:
    c = ctx()
    lab = obs(category=[{"coding": [{"code": "laboratory"}]}], valueQuantity={"value": 5.5, "unit": "mmol/L"})
    (e,), _ = map_resource(lab, c)
    assert (e["code"], e["numeric_value"], e["unit"], e["time"]) == ("LAB//LOINC//2345-7", 5.5, "mmol/L",
                                                                     us("2020-01-01T09:00:00"))
    assert c.descriptions["LAB//LOINC//2345-7"] == "Glucose"
    text = obs(valueCodeableConcept={"coding": [{"code": "x", "display": "Never smoker"}]})
    (e,), _ = map_resource(text, c)
    assert (e["code"], e["text_value"], e["numeric_value"]) == ("OBSERVATION//LOINC//2345-7", "Never smoker",
                                                                None)
    bp = obs(category=[{"coding": [{"code": "vital-signs"}]}], component=[
        {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
         "valueQuantity": {"value": 120, "unit": "mm[Hg]"}},
        {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]},
         "valueQuantity": {"value": 80, "unit": "mm[Hg]"}}])
    events, _ = map_resource(bp, c)
    assert [(e["code"], e["numeric_value"]) for e in events] == [("VITAL//LOINC//8480-6", 120.0),
                                                                 ("VITAL//LOINC//8462-4", 80.0)]


def test_medication_reference_contained_and_lookup() -> None:
    rx = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361"}]}
    base = {"resourceType": "MedicationRequest", "id": "m1", "status": "active", "intent": "order",
            "subject": {"reference": f"Patient/{PID}"}, "authoredOn": "2020-01-01"}
    contained = {**base, "contained": [{"resourceType": "Medication", "id": "med", "code": rx}],
                 "medicationReference": {"reference": "#med"}}
    (e,), _ = map_resource(contained, ctx())
    assert e["code"] == "MEDICATION//RXNORM//197361"
    ref = {**base, "medicationReference": {"reference": "Medication/abc"}}
    (e,), _ = map_resource(ref,
                           ctx(medications={"Medication/abc": {"resourceType": "Medication", "code": rx}}))
    assert e["code"] == "MEDICATION//RXNORM//197361"
    events, (r,) = map_resource(ref, ctx())
    assert events == [] and r["field"] == "medicationReference" and "not found" in r["reason"]


def test_rejects_name_field_and_reason() -> None:
    c = ctx(birth_floor_us={SID: us("1990-01-01T00:00:00")})
    cases = {
        "no subject": (obs(subject=None), "subject|patient", "missing subject reference"),
        "group subject": (obs(subject={"reference": "Group/g1"}), "subject", "not a Patient reference"),
        "bad time": (obs(effectiveDateTime="2020-02-30"), "effectiveDateTime", "unparseable time"),
        "no time": (obs(effectiveDateTime=None), None, "missing time"),
        "before birth": (obs(effectiveDateTime="1980-01-01"), "effectiveDateTime",
                         "before the subject's birth"),
        "future": (obs(effectiveDateTime="2099-01-01"), "effectiveDateTime", "far future"),
        "no code": (obs(code={"text": "free text only"}), "code", "no coding with a code"),
        "void": (obs(status="entered-in-error"), "status", "entered-in-error"),
    }
    for name, (res, field, reason) in cases.items():
        events, rejects = map_resource(res, c)
        assert events == [] and len(rejects) == 1, name
        if field is not None:
            assert rejects[0]["field"] == field, name
        assert reason in rejects[0]["reason"], name


def test_stu3_shapes_map() -> None:
    imm = {"resourceType": "Immunization", "id": "i1", "status": "completed", "notGiven": False,
           "patient": {"reference": f"Patient/{PID}"}, "date": "2015-06-01",
           "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "140"}]}}
    cond = {"resourceType": "Condition", "id": "c1", "clinicalStatus": "active",
            "subject": {"reference": f"Patient/{PID}"},
            "context": {"reference": "Encounter/e9"}, "assertedDate": "2015-06-02",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"},
                                {"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"}]}}
    (i,), _ = map_resource(imm, ctx())
    (d,), _ = map_resource(cond, ctx())
    assert i["code"] == "IMMUNIZATION//CVX//140" and i["time"] == us("2015-06-01T00:00:00")
    assert d["code"] == "DIAGNOSIS//ICD//10//I10" and d["encounter_id"] == "e9"  # ICD preferred over SNOMED


def _bundle() -> dict[str, Any]:
    pat_url, enc_url = "urn:uuid:aaa", "urn:uuid:bbb"
    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": pat_url,
         "resource": {"resourceType": "Patient", "id": PID, "birthDate": "1960-01-01", "gender": "male"}},
        {"fullUrl": enc_url, "resource": {"resourceType": "Encounter", "id": "e1", "status": "finished",
                                          "class": {
                                              "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                              "code": "IMP"},
                                          "subject": {"reference": pat_url},
                                          "period": {"start": "2020-01-01T00:00:00Z",
                                                     "end": "2020-01-03T00:00:00Z"}}},
        {"fullUrl": "urn:uuid:ccc",
         "resource": obs(subject={"reference": pat_url}, encounter={"reference": enc_url},
                                                    valueQuantity={"value": "high"})},
        {"fullUrl": "urn:uuid:ddd", "resource": {"resourceType": "Claim", "id": "cl"}},
    ]}


def test_bundle_to_events_resolves_urn_uuid_and_validates() -> None:
    bundle = _bundle()
    before = json.dumps(bundle, sort_keys=True)
    res = bundle_to_events(bundle, validate="full")
    assert json.dumps(bundle, sort_keys=True) == before  # the caller's Bundle is not modified
    assert res.events.schema == EVENTS_SCHEMA and res.rejects.schema == REJECTS_SCHEMA
    rows = res.events.to_pylist()
    assert [r["code"] for r in rows] == ["GENDER//M", "MEDS_BIRTH", "ENCOUNTER//INPATIENT//START",
                                         "ENCOUNTER//INPATIENT//END"]
    assert {r["subject_id"] for r in rows} == {SID} and rows[2]["encounter_id"] == "e1"
    (rej,) = res.rejects.to_pylist()  # the Observation's valueQuantity.value is a string: invalid R4
    assert (rej["record_index"], rej["resource_id"]) == (2, "o1")
    assert "valueQuantity" in rej["field"] and rej["reason"].startswith("invalid R4B Observation")
    s = res.summary.to_dict()
    assert s["reconciled"] and s["totals"] == {"in": 4, "mapped": 2, "events": 4, "rejected": 1, "skipped": 1,
                                              "duplicate": 0}
    # without validation the mapper itself rejects it: a value not of its declared type is never a silent null
    (rej,) = bundle_to_events(bundle, validate="none").rejects.to_pylist()
    assert (rej["resource_id"], rej["field"], rej["reason"]) == ("o1", "valueQuantity.value",
                                                                 "value is not a number")


def test_auto_mode_adds_validator_reason_and_samples() -> None:
    bad = obs(effectiveDateTime="2020-02-30", valueQuantity={"value": "x"})
    good = obs(id="o2")
    rows = [{"source_file": "f", "record_index": i, "payload": json.dumps(r), "subject_id": SID,
             "floor": None,
             "med_key": None, "med_payload": None} for i, r in enumerate([bad, good])]
    out = list(pending_rows(rows, "auto", us("2030-01-01T00:00:00"), every=1))
    (rej,) = [r for r in out if r[0] == "R"]
    assert "unparseable time" in rej[14] and "FHIR validation" in rej[14]
    samples = [r for r in out if r[0] == "V"]
    assert [(r[12], r[15]) for r in samples] == [("o2", "valid")]
