"""Serving input parsing and FHIR output: every refusal has its status (400/413/422) and names row and
field without echoing the payload; partial records; OperationOutcome and RiskAssessment validity."""

from __future__ import annotations

import copy
import gzip
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from ehrfm.config.serve import Limits
from ehrfm.serve.core import Scorer
from ehrfm.serve.fhir_io import (
    MAX_LISTED_ISSUES,
    InputError,
    Issue,
    error_outcome,
    operation_outcome,
    parse_bundle,
    parse_events,
    parse_request,
    parse_time,
    risk_assessment,
    scrub,
    validate_risk_assessment,
)
from ehrfm.serve.pyfunc import example_bundle

MARK = "ZZMARKERZZ"  # planted in the offending value: it must never come back in a message
# the real Synthea bundles (of 615) with a record dated before the patient's birth: file -> rejects
# (found once by mapping every bundle with validate="full"; no other bundle has a reject)
BEFORE_BIRTH = {
    "Collin_Wehner_0be07450-c303-4ff7-88ad-37077e23ec4a.json.gz": [(22, "MedicationRequest", "authoredOn")],
    "Dorris_Kuhic_50e4c44a-bc61-4535-a064-afd56684dbe4.json.gz": [
        (24, "Encounter", "period.start"), (25, "Condition", "onsetDateTime"),
        (26, "MedicationRequest", "authoredOn")],
    "Vinnie_Dare_506e8e19-39c8-4259-81a6-06a122344809.json.gz": [(110, "MedicationRequest", "authoredOn")],
}


def _bundle(**patch: object) -> dict[str, Any]:
    """The example bundle with its Observation (entry 2) patched."""
    b = example_bundle()
    b["entry"][2]["resource"].update(patch)
    return b


def _patched(index: int, **patch: object) -> dict[str, Any]:
    b = example_bundle()
    b["entry"][index]["resource"].update(patch)
    return b


def _without(index: int, key: str) -> dict[str, Any]:
    b = example_bundle()
    del b["entry"][index]["resource"][key]
    return b


def _bundles(*bundles: Any, **extra: Any) -> pd.DataFrame:
    return pd.DataFrame([{"bundle": b if isinstance(b, (str, bytes)) else json.dumps(b), **extra}
                         for b in bundles])


EX = json.dumps(example_bundle())
DEEP = "[" * 100_000 + json.dumps(MARK) + "]" * 100_000
NESTED_71 = json.loads("[" * 70 + json.dumps(MARK) + "]" * 70)  # under the parser's own stop (1,024)
SHALLOW_DEEP = json.dumps({"resourceType": "Bundle",
                           "entry": [{"resource": {"resourceType": "Patient", "id": "p", "x": NESTED_71}}]})
# (request, limits, strict, status, needle)
CASES: list[tuple[str, Callable[[], pd.DataFrame], Limits, bool, int, str]] = [
    ("malformed JSON", lambda: _bundles('{"resourceType": ' + MARK), Limits(), False, 400,
     "row 0: field 'bundle' is not valid JSON"),
    ("not UTF-8", lambda: _bundles(b"\xff\xfe" + MARK.encode()), Limits(), False, 400,
     "field 'bundle' is not valid JSON"),
    ("not a Bundle", lambda: _bundles({"resourceType": MARK}), Limits(), False, 400,
     "field 'bundle.resourceType' must be 'Bundle'"),
    ("no entries", lambda: _bundles({"resourceType": "Bundle", "entry": [], "id": MARK}), Limits(), False,
     400, "field 'bundle.entry' must be a non-empty list"),
    ("wrong type", lambda: pd.DataFrame({"bundle": [7]}), Limits(), False, 400,
     "field 'bundle' must be JSON text, got int"),
    ("neither field", lambda: pd.DataFrame({"bundle": [None], "tasks": [MARK]}), Limits(), False, 400,
     "row 0: give exactly one of the fields"),
    ("unknown column", lambda: pd.DataFrame({"bundle": [EX], MARK: ["x"]}), Limits(), False, 400,
     "1 unknown input column(s)"),
    ("no rows", lambda: pd.DataFrame({"bundle": []}), Limits(), False, 400, "the request has no rows"),
    ("bad time", lambda: _bundles(EX, prediction_time=MARK), Limits(), False, 400,
     "row 0: field 'prediction_time' is not an ISO 8601 date-time"),
    ("tasks not text", lambda: _bundles(EX, tasks=12), Limits(), False, 400,
     "row 0: field 'tasks' must be a comma-separated string"),
    ("row bytes", lambda: _bundles(EX.replace("female", MARK)), Limits(max_request_bytes=100), False, 413,
     "row 0: field 'bundle' is"),
    ("nested 100k deep", lambda: _bundles(DEEP), Limits(), False, 413,
     "row 0: field 'bundle': JSON nested deeper than max_json_depth=64"),
    ("nested 71 deep", lambda: _bundles(SHALLOW_DEEP), Limits(), False, 413, "max_json_depth=64"),
    ("deep, not a Bundle", lambda: _bundles(json.dumps(NESTED_71)), Limits(), False, 413,
     "max_json_depth=64"),
    ("many values, not a Bundle", lambda: _bundles(json.dumps([MARK] * 50)), Limits(max_json_elements=20),
     False, 413, "max_json_elements=20"),
    ("json elements", lambda: _bundles(_patched(0, gender=MARK)), Limits(max_json_elements=20), False, 413,
     "max_json_elements=20"),
    ("resources", lambda: _bundles(_patched(0, gender=MARK)), Limits(max_resources=2), False, 413,
     "holds 3 resources, over the limit max_resources=2"),
    ("events", lambda: _bundles(_patched(0, gender=MARK)), Limits(max_events=2), False, 413,
     "row 0: 5 events, over the limit max_events=2"),
    ("patients", lambda: _bundles(EX, EX, EX), Limits(max_patients=2), False, 413,
     "3 rows, over the limit max_patients=2"),
    ("body", lambda: _bundles(EX, _patched(0, gender=MARK)), Limits(max_body_bytes=len(EX) + 10), False, 413,
     "over the limit max_body_bytes="),
    ("long tasks", lambda: _bundles(EX, tasks=MARK * 500), Limits(), False, 413,
     "row 0: field 'tasks' is 5,000 characters, over the limit of 4,096"),
    ("no Patient", lambda: _bundles({**example_bundle(), "entry": example_bundle()["entry"][1:]}), Limits(),
     False, 422, "expected exactly one Patient resource, found 0"),
    ("two Patients", lambda: _bundles({**example_bundle(), "entry": example_bundle()["entry"][:1] * 2}),
     Limits(), False, 422, "found 2"),
    ("Patient without id", lambda: _bundles(_without(0, "id")), Limits(), False, 422,
     "field 'Patient.id' (entry[0]) is missing"),
    ("Patient rejected", lambda: _bundles(_patched(0, birthDate=MARK)), Limits(), False, 422,
     "row 0: the Patient was rejected: entry[0] Patient field birthDate"),
    ("future time", lambda: _bundles(EX, prediction_time="2099-01-01T00:00:00Z"), Limits(), False, 422,
     "row 0: field 'prediction_time' is in the future (more than max_clock_skew_s=300 s"),
    ("no timed event",
     lambda: _bundles({**example_bundle(), "entry": [_without(0, "birthDate")["entry"][0]]}),
     Limits(), False, 422, "row 0: no event has a time"),
    ("strict", lambda: _bundles(_bundle(valueQuantity={"value": MARK, "unit": "mg/dL"})), Limits(), True, 422,
     "row 0: 1 resource(s) in field 'bundle' rejected (strict): entry[2] Observation field "
     "valueQuantity.value: invalid R4B Observation"),
    ("strict, unknown type", lambda: _bundles(_bundle(resourceType=MARK)), Limits(), True, 422,
     "entry[2] resource field resourceType: unknown resourceType <value>"),
    ("strict, before birth", lambda: _bundles(_bundle(
        effectiveDateTime="1950-01-01", code={"coding": [{"system": "http://loinc.org", "code": MARK}]})),
     Limits(), True, 422,
     "field effectiveDateTime: impossible time: OBSERVATION//LOINC//<value> before the subject's"),
    ("strict, foreign subject", lambda: _bundles(_bundle(subject={"reference": f"Patient/{MARK}"})), Limits(),
     True, 422, "entry[2] Observation field subject: "),
    ("events not a list", lambda: pd.DataFrame({"events": [json.dumps({"code": MARK})]}), Limits(), False,
     400, "field 'events' must be a non-empty JSON list"),
    ("event time",
     lambda: pd.DataFrame({"events": [json.dumps([{"subject_id": 1, "code": "X", "time": MARK}])]}),
     Limits(), False, 400, "field 'events[].time' must be ISO 8601"),
    ("event count", lambda: pd.DataFrame({"events": [json.dumps([{"subject_id": 1, "code": MARK}] * 3)]}),
     Limits(max_events=2), False, 413, "field 'events' holds 3 events, over the limit max_events=2"),
    ("events untimed", lambda: pd.DataFrame({"events": [json.dumps([{"subject_id": 1, "code": MARK}])]}),
     Limits(), False, 422, "no event has a time"),
]


@pytest.mark.parametrize(("request_fn", "limits", "strict", "status", "needle"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refusals_have_a_status_and_never_echo_the_payload(request_fn: Callable[[], pd.DataFrame],
                                                           limits: Limits, strict: bool, status: int,
                                                           needle: str) -> None:
    with pytest.raises(InputError) as err:
        parse_request(request_fn(), limits, strict=strict)
    assert err.value.status == status, str(err.value)
    assert needle in str(err.value)
    assert MARK not in str(err.value)


def test_a_huge_bundle_is_refused_before_mapping() -> None:
    """170k Observations: the entry count is checked before any resource is validated or mapped."""
    obs = example_bundle()["entry"][2]
    big = {**example_bundle(), "entry": example_bundle()["entry"] + [obs] * 170_000}
    text = json.dumps(big)
    t0 = time.perf_counter()
    with pytest.raises(InputError,
                       match="holds 170,003 resources, over the limit max_resources=100,000") as err:
        parse_bundle(0, text, Limits(max_request_bytes=len(text)))
    assert err.value.status == 413
    # mapping and validating them takes minutes; parsing ~60 MB of JSON and counting takes well under that
    assert time.perf_counter() - t0 < 10


def test_parsed_json_is_bounded_too() -> None:
    nested: Any = MARK
    for _ in range(100):
        nested = [nested]
    with pytest.raises(InputError, match="max_json_depth=64") as err:
        parse_bundle(0, {"resourceType": "Bundle", "entry": nested}, Limits())
    assert err.value.status == 413
    p = parse_bundle(0, example_bundle(), Limits())  # a dict (a Python caller) parses like its text
    assert p.patient_ref == "example-patient" and len(p.events) == 5 and not p.partial


def test_partial_record_keeps_the_rest_and_lists_the_rejects() -> None:
    from fhir.resources.R4B.operationoutcome import OperationOutcome

    good = parse_bundle(0, EX, Limits())
    bad = parse_bundle(4, json.dumps(_bundle(valueQuantity={"value": MARK, "unit": "mg/dL"})), Limits())
    assert bad.partial and bad.patient_ref == "example-patient"
    assert len(bad.events) == len(good.events) - 1 and "LAB//LOINC//2160-0" not in set(bad.events["code"])
    [issue] = bad.issues
    assert (issue.row, issue.entry, issue.resource_type, issue.resource_id, issue.field) == (
        4, 2, "Observation", "example-obs", "valueQuantity.value")
    oo = operation_outcome(bad.issues)
    OperationOutcome.model_validate(oo)
    [item] = oo["issue"]
    assert item["severity"] == "warning" and item["expression"] == ["Observation.valueQuantity.value"]
    assert "entry[2] Observation/example-obs" in item["diagnostics"] and MARK not in json.dumps(oo)

    # a resource of another patient is left out, not scored on a second timeline
    foreign = parse_bundle(0, json.dumps(_bundle(subject={"reference": "Patient/someone-else"})), Limits())
    assert [(i.entry, i.field) for i in foreign.issues] == [(2, "subject")]
    assert foreign.events["subject_id"].nunique() == 1 and len(foreign.events) == len(good.events) - 1
    # a misspelt type is payload text: it is not carried as the issue's resource_type
    unknown = parse_bundle(0, json.dumps(_bundle(resourceType=MARK)), Limits())
    assert unknown.issues[0].resource_type is None
    assert MARK not in json.dumps(operation_outcome(unknown.issues))


def test_operation_outcomes_validate() -> None:
    from fhir.resources.R4B.operationoutcome import OperationOutcome

    issues = [Issue(0, i, "Observation", f"o{i}", "component.0.code|code", "no coding with a code")
              for i in range(MAX_LISTED_ISSUES + 5)]
    oo = operation_outcome(issues)
    OperationOutcome.model_validate(oo)
    assert len(oo["issue"]) == MAX_LISTED_ISSUES + 1 and "5 more" in oo["issue"][-1]["diagnostics"]
    assert oo["issue"][0]["expression"] == ["Observation.component[0].code", "Observation.code"]
    OperationOutcome.model_validate(operation_outcome([]))
    err = error_outcome("row 0: field 'bundle' is not valid JSON")
    OperationOutcome.model_validate(err)
    assert err["issue"][0]["severity"] == "error" and err["issue"][0]["code"] == "invalid"


def test_scrub_removes_payload_values() -> None:
    res = {"resourceType": "Observation", "code": {"coding": [{"code": MARK}]}, "status": "final"}
    assert scrub(f"impossible time: LAB//LOINC//{MARK} before birth", res) == (
        "impossible time: LAB//LOINC//<value> before birth")
    assert scrub("reference 'Patient/x' is not a Medication") == "reference <value> is not a Medication"
    assert scrub("invalid R4B Observation: bad", res) == "invalid R4B Observation: bad"  # the type stays


def test_real_bundles_dated_before_birth_now_score_partially(synthea_bundles: Path) -> None:
    for name, expected in BEFORE_BIRTH.items():
        text = gzip.decompress((synthea_bundles / name).read_bytes())
        p = parse_bundle(0, text, Limits())
        assert p.partial
        assert [(i.entry, i.resource_type, i.field) for i in p.issues] == expected
        assert all("before the subject's birth" in i.reason for i in p.issues)
        with pytest.raises(InputError, match="before the subject's birth") as err:
            parse_bundle(0, text, Limits(), strict=True)
        assert err.value.status == 422


def test_prediction_time() -> None:
    with pytest.raises(InputError, match="field 'prediction_time'") as err:
        parse_time(0, "yesterday-ish")
    assert err.value.status == 400
    assert parse_time(0, "2020-01-01T05:00:00+05:00") == pd.Timestamp("2020-01-01T00:00:00")
    assert parse_time(0, None) is None
    now = pd.Timestamp("2024-05-01T12:00:00Z")
    assert parse_time(0, "2024-05-01T12:04:59Z", 300, now) == pd.Timestamp("2024-05-01T12:04:59")
    assert parse_time(0, "2024-05-01T17:04:00+05:00", 300, now) is not None  # offsets count
    with pytest.raises(InputError, match="max_clock_skew_s=300") as err:
        parse_time(0, "2024-05-01T12:05:01", 300, now)  # no offset: UTC
    assert err.value.status == 422
    assert parse_time(0, "2099-01-01") == pd.Timestamp("2099-01-01")  # without a skew: no check


def test_meds_events_input() -> None:
    ev: list[dict[str, Any]] = [{"subject_id": 7, "time": None, "code": "GENDER//F"},
          {"subject_id": 7, "time": "2020-01-02T09:00:00", "code": "LAB//LOINC//2160-0",
           "numeric_value": 1.1},
          {"subject_id": 7, "time": "2020-01-01T08:00:00Z", "code": "ENCOUNTER//INPATIENT//START",
           "encounter_id": "e"}]
    frame = parse_events(0, json.dumps(ev), Limits())
    assert frame["code"].tolist() == ["GENDER//F", "ENCOUNTER//INPATIENT//START", "LAB//LOINC//2160-0"]
    assert str(frame["time"].dtype) == "datetime64[us]" and frame["numeric_value"].dtype == "float32"
    with pytest.raises(InputError, match=r"'events\[1\].code'"):
        parse_events(0, json.dumps([ev[0], {"subject_id": 7, "time": None}]), Limits())
    with pytest.raises(InputError, match="one subject per row") as err:
        parse_events(0, json.dumps([ev[0], {**ev[1], "subject_id": 8}]), Limits())
    assert err.value.status == 422
    with pytest.raises(InputError, match=r"'events\[\].time'"):
        parse_events(0, json.dumps([{**ev[1], "time": "soon"}]), Limits())


def test_input_error_status_default() -> None:
    assert InputError("x").status == 422 and InputError("x", 413).status == 413


def test_risk_assessments_validate_for_every_kind(scorer: Scorer, bundle_events: list[pd.DataFrame]) -> None:
    results = scorer.score_events(bundle_events[0])
    assert {r["kind"] for r in results} == {"binary", "tte", "forecast"}
    for r in results:
        ra = validate_risk_assessment(risk_assessment(r, "abc", "ehrfm_tiny (mamba)", "desc"))
        assert ra["status"] == "final" and ra["subject"]["reference"] == "Patient/abc"
        assert ra["occurrenceDateTime"].endswith("+00:00")
        probs = [p["probabilityDecimal"] for p in ra["prediction"]]
        assert probs and all(0.0 <= p <= 1.0 for p in probs)
        if r["kind"] == "binary":
            assert probs == [pytest.approx(r["prob"])]
        if r["kind"] == "tte":  # P(event by t) = 1 - S(t), non-decreasing with t
            assert probs == pytest.approx([1 - s for s in r["survival"][1:]]) and probs == sorted(probs)
            assert ra["prediction"][-1]["whenRange"]["high"]["value"] == r["times_days"][-1]
    bad = copy.deepcopy(risk_assessment(results[0], "abc", "m"))
    bad["status"] = 7
    with pytest.raises(ValueError):
        validate_risk_assessment(bad)


@pytest.mark.parametrize("text", ["5", '"text"', "true", "[]"])
def test_json_that_is_not_an_object_is_a_bad_request(text: str) -> None:
    """A scalar or an empty list is a 400 naming the field (it once reached the bounds walk: a 500)."""
    with pytest.raises(InputError, match="field 'bundle.resourceType' must be 'Bundle'") as err:
        parse_bundle(0, text, Limits())
    assert err.value.status == 400
