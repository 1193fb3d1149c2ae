"""Serving input parsing and FHIR output: clear errors naming row and field; RiskAssessment validity."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ehrfm.serve.core import Limits, Scorer
from ehrfm.serve.fhir_io import (
    InputError,
    parse_bundle,
    parse_events,
    parse_request,
    parse_time,
    risk_assessment,
    validate_risk_assessment,
)
from ehrfm.serve.pyfunc import example_bundle


def _bundle(**patch: object) -> dict:
    b = example_bundle()
    b["entry"][2]["resource"].update(patch)
    return b


@pytest.mark.parametrize(("payload", "needle"), [
    ("{not json", "field 'bundle' is not valid JSON"),
    (json.dumps({"resourceType": "Patient", "id": "p"}), "'bundle.resourceType' must be 'Bundle'"),
    (json.dumps({"resourceType": "Bundle", "entry": []}), "'bundle.entry' must be a non-empty list"),
    (json.dumps({**example_bundle(), "entry": example_bundle()["entry"][1:]}),
     "exactly one Patient resource, found 0"),
    (json.dumps({**example_bundle(), "entry": example_bundle()["entry"][:1] * 2}),
     "exactly one Patient resource, found 2"),
    (json.dumps(_bundle(valueQuantity={"value": "abc", "unit": "mg/dL"})),
     "Observation/example-obs field valueQuantity.value"),
    (json.dumps(_bundle(effectiveDateTime="2999-01-01T00:00:00Z")), "far future"),
])
def test_bad_bundles_name_the_problem(payload: str, needle: str) -> None:
    with pytest.raises(InputError, match="row 3") as err:
        parse_bundle(3, payload, Limits())
    assert needle in str(err.value)


def test_limits() -> None:
    text = json.dumps(example_bundle())
    with pytest.raises(InputError, match="over the limit max_request_bytes=100"):
        parse_bundle(0, text, Limits(max_request_bytes=100))
    with pytest.raises(InputError, match="over the limit max_events=2"):
        parse_bundle(0, text, Limits(max_events=2))
    frame = pd.DataFrame({"bundle": [text] * 3})
    with pytest.raises(InputError, match="max_patients=2"):
        parse_request(frame, Limits(max_patients=2))
    events, ref = parse_bundle(0, text, Limits())
    assert ref == "example-patient" and len(events) == 5


def test_request_shape_errors() -> None:
    with pytest.raises(InputError, match="exactly one of the fields 'bundle'"):
        parse_request(pd.DataFrame({"bundle": [None], "events": [None]}), Limits())
    with pytest.raises(InputError, match=r"unknown input column\(s\) \['patient'\]"):
        parse_request(pd.DataFrame({"patient": ["x"]}), Limits())
    with pytest.raises(InputError, match="field 'prediction_time'"):
        parse_time(0, "yesterday-ish")
    assert parse_time(0, "2020-01-01T05:00:00+05:00") == pd.Timestamp("2020-01-01T00:00:00")
    assert parse_time(0, None) is None


def test_meds_events_input() -> None:
    ev = [{"subject_id": 7, "time": None, "code": "GENDER//F"},
          {"subject_id": 7, "time": "2020-01-02T09:00:00", "code": "LAB//LOINC//2160-0",
           "numeric_value": 1.1},
          {"subject_id": 7, "time": "2020-01-01T08:00:00Z", "code": "ENCOUNTER//INPATIENT//START",
           "encounter_id": "e"}]
    frame = parse_events(0, json.dumps(ev), Limits())
    assert frame["code"].tolist() == ["GENDER//F", "ENCOUNTER//INPATIENT//START", "LAB//LOINC//2160-0"]
    assert str(frame["time"].dtype) == "datetime64[us]" and frame["numeric_value"].dtype == "float32"
    with pytest.raises(InputError, match=r"'events\[1\].code'"):
        parse_events(0, json.dumps([ev[0], {"subject_id": 7, "time": None}]), Limits())
    with pytest.raises(InputError, match="one subject per row"):
        parse_events(0, json.dumps([ev[0], {**ev[1], "subject_id": 8}]), Limits())
    with pytest.raises(InputError, match=r"'events\[\].time'"):
        parse_events(0, json.dumps([{**ev[1], "time": "soon"}]), Limits())


def test_risk_assessments_validate_for_every_kind(scorer: Scorer, bundle_events: list[pd.DataFrame]) -> None:
    results = scorer.score_events(bundle_events[0])
    assert {r["kind"] for r in results} == {"binary", "tte", "forecast"}
    for r in results:
        ra = validate_risk_assessment(risk_assessment(r, "abc", "ehrfm_tiny (mamba)", "desc"))
        assert ra["status"] == "final" and ra["subject"]["reference"] == "Patient/abc"
        probs = [p["probabilityDecimal"] for p in ra["prediction"]]
        assert probs and all(0.0 <= p <= 1.0 for p in probs)
        if r["kind"] == "binary":
            assert probs == [pytest.approx(r["prob"])]
        if r["kind"] == "tte":  # P(event by t) = 1 - S(t), non-decreasing with t
            assert probs == pytest.approx([1 - s for s in r["survival"][1:]]) and probs == sorted(probs)
            assert ra["prediction"][-1]["whenRange"]["high"]["value"] == r["times_days"][-1]
    bad = risk_assessment(results[0], "abc", "m")
    bad["status"] = 7
    with pytest.raises(ValueError):
        validate_risk_assessment(bad)
