"""Copies of a resource, non-numeric values, records without a valid Patient and events after death on
the one-patient path (no Spark); the Spark path is held to the same results in test_fhir_inputs.py."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ehrfm.ingest.deaths import count_after_death
from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.ingest.fhir.dedup import NO_PATIENT, ORPHAN_PREFIX, Copy, resolve

MAX_TIME = 1_893_456_000_000_000  # 2030-01-01
P = {"reference": "Patient/p"}


def _obs(oid: str, value: Any = 5.0, when: str = "2020-01-01T10:00:00Z", **kw: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final", "subject": P,
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}, "effectiveDateTime": when,
            "valueQuantity": {"value": value, "unit": "mmol/L"}, **kw}


def _bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}


PATIENT = {"resourceType": "Patient", "id": "p", "birthDate": "1980-01-01", "gender": "male",
           "deceasedDateTime": "2021-01-01T00:00:00Z"}


def _run(*resources: dict[str, Any], **kw: Any) -> Any:
    return bundle_to_events(_bundle(*resources), validate="none", max_time_us=MAX_TIME, **kw)


def test_resolve_picks_latest_update_then_path_order() -> None:
    a, b = Copy("f1", 0, None, "x"), Copy("f2", 3, None, "y")
    assert resolve([a]) == {}
    (loser, d), = resolve([a, b]).items()
    assert loser == ("f1", 0) and d.status == "rejected" and "f2#3" in (d.reason or "")
    assert "path order" in (d.reason or "") and d.field == "id"
    newer = Copy("f0", 1, 10, "z")  # earlier in path order, but the only one with meta.lastUpdated
    out = resolve([a, b, newer])
    assert set(out) == {("f1", 0), ("f2", 3)}
    assert all("meta.lastUpdated" in (d.reason or "") for d in out.values())
    same = Copy("f3", 0, None, "y")
    assert resolve([b, same])[("f2", 3)].status == "duplicate"


def test_copies_count_once_and_conflicts_are_rejects() -> None:
    old = _obs("o2", 7.0, meta={"lastUpdated": "2020-01-01T00:00:00Z"})
    new = _obs("o2", 8.0, meta={"lastUpdated": "2021-01-01T00:00:00Z"})
    twin = copy.deepcopy(_obs("o1"))
    twin["meta"] = {"versionId": "2"}  # meta alone differs: still the same content
    res = _run(PATIENT, _obs("o1"), new, twin, old, PATIENT)
    s = res.summary.to_dict()
    assert s["reconciled"] and s["by_resource_type"]["Patient"] == {
        "in": 2, "mapped": 1, "events": 3, "rejected": 0, "skipped": 0, "duplicate": 1}
    assert s["by_resource_type"]["Observation"] == {
        "in": 4, "mapped": 2, "events": 2, "rejected": 1, "skipped": 0, "duplicate": 1}
    (rej,) = res.rejects.to_pylist()
    assert (rej["record_index"], rej["resource_id"], rej["field"]) == (4, "o2", "meta.lastUpdated")
    assert rej["reason"].startswith("conflicting version: superseded by the copy at <bundle>#2")
    values = sorted(v for v in res.events.column("numeric_value").to_pylist() if v is not None)
    assert values == [5.0, 8.0]


@pytest.mark.parametrize(("value", "field"), [("abc", "valueQuantity.value"), (True, "valueQuantity.value")])
def test_a_value_of_the_wrong_type_is_a_reject(value: Any, field: str) -> None:
    res = _run(PATIENT, _obs("o", value))
    (rej,) = res.rejects.to_pylist()
    assert (rej["resource_id"], rej["field"], rej["reason"]) == ("o", field, "value is not a number")
    assert "abc" not in rej["reason"]  # never echo payload content
    comp = _obs("bp", None)
    del comp["valueQuantity"]
    comp["component"] = [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                          "valueInteger": 1.5}]
    (rej,) = _run(PATIENT, comp).rejects.to_pylist()
    assert (rej["field"], rej["reason"]) == ("component.0.valueInteger", "value is not an integer")
    assert _run(PATIENT, _obs("empty", None)).summary.totals()["mapped"] == 2  # an absent value is fine


def test_records_of_a_rejected_or_absent_patient_are_rejects() -> None:
    bad = {**PATIENT, "deceasedDateTime": "2999-01-01"}  # far-future death: the Patient is rejected
    res = _run(bad, _obs("o1"), {"resourceType": "Organization", "id": "org"})
    rej = {r["resource_type"]: r for r in res.rejects.to_pylist()}
    assert set(rej) == {"Patient", "Observation"} and res.events.num_rows == 0
    assert rej["Observation"]["reason"] == ORPHAN_PREFIX + rej["Patient"]["reason"]
    assert rej["Observation"]["field"] == "subject"
    (orphan,) = _run(_obs("o1")).rejects.to_pylist()  # no Patient at all
    assert orphan["reason"] == ORPHAN_PREFIX + NO_PATIENT
    kept = _run(_obs("o1"), anonymous_subjects=True)
    assert kept.rejects.num_rows == 0 and kept.events.num_rows == 1


def test_events_after_death_are_kept_and_counted() -> None:
    res = _run(PATIENT, _obs("before"), _obs("after", when="2022-05-01"),
               {"resourceType": "Condition", "id": "c", "subject": P, "recordedDate": "2023-01-01",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}})
    assert res.summary.after_death == {"fhir:Observation": 1, "fhir:Condition": 1}
    assert res.events.num_rows == 3 + 3  # gender, birth, death + all three events kept
    assert count_after_death(res.events.slice(0, 0)) == {}
