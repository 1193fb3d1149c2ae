"""Explanations in serving: off by default, on per request row or per deployment; the JSON column and the
RiskAssessment (``basis`` references to the Bundle's resources, extensions otherwise) agree, validate, and add
up to the explained output (completeness)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from ehrfm.explain.fhir import EXT_ATTRIBUTION, EXT_EVENT, EXT_EXPLANATION
from ehrfm.serve.core import Scorer
from ehrfm.serve.fhir_io import InputError, parse_flag
from ehrfm.serve.pyfunc import OUTPUT_COLUMNS, predict_frame, signature


def _ids(bundle_text: str) -> set[str]:
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in json.loads(bundle_text)["entry"]
            if "id" in e.get("resource", {})}


def _events_json(events: pd.DataFrame) -> str:
    ev = events[["subject_id", "time", "code", "numeric_value", "encounter_id"]].copy()
    ev["time"] = ev["time"].map(lambda t: None if pd.isna(t) else t.isoformat())
    ev["numeric_value"] = ev["numeric_value"].astype(object).where(ev["numeric_value"].notna(), None)
    return json.dumps(ev.to_dict("records"))


def test_off_by_default(scorer: Scorer, bundle_texts: list[str]) -> None:
    out = predict_frame(scorer, pd.DataFrame({"bundle": bundle_texts[:1]}))
    assert "explanation" in OUTPUT_COLUMNS and out["explanation"].isna().all()
    for ra in map(json.loads, out["risk_assessment"]):
        assert "basis" not in ra and "extension" not in ra
    assert "explanation" in signature().outputs.input_names()


def test_bundle_explanations_reference_the_contributing_resources(scorer: Scorer,
                                                                  bundle_texts: list[str]) -> None:
    text = bundle_texts[0]
    out = predict_frame(scorer, pd.DataFrame({"bundle": [text], "explain": ["true"]}))
    k = scorer.config.explain_top_k
    explained = out[out["kind"].isin(["binary", "tte"])]
    assert len(explained) and out.loc[out["kind"] == "forecast", "explanation"].isna().all()
    ids, referenced = _ids(text), 0
    for _, rec in explained.iterrows():
        ex = json.loads(rec["explanation"])
        assert ex["target"] == ("logit" if rec["kind"] == "binary" else "risk_logit")
        assert ex["sum_attributions"] == pytest.approx(ex["f_input"] - ex["f_baseline"], rel=0.01, abs=1e-5)
        assert ex["converged"] and ex["rel_error"] <= 0.01
        if rec["kind"] == "binary":  # the raw head output behind the served probability
            assert 1 / (1 + math.exp(-ex["f_input"])) == pytest.approx(rec["prob"], rel=1e-4)
        assert 1 <= len(ex["events"]) <= k and all(e["text"] for e in ex["events"])
        ra = json.loads(rec["risk_assessment"])
        basis = {b["reference"]: b for b in ra.get("basis", [])}
        for e in ex["events"]:
            if e["resource"] is not None:
                assert e["resource"] in ids and e["resource"] in basis
                weight = basis[e["resource"]]["extension"][0]
                assert weight["url"] == EXT_ATTRIBUTION
                assert weight["valueDecimal"] == pytest.approx(e["attribution"], abs=1e-6)
                referenced += 1
        urls = [x["url"] for x in ra["extension"]]
        assert urls[0] == EXT_EXPLANATION
        assert urls.count(EXT_EVENT) + len(basis) == len(ex["events"])
    assert referenced > 0, "no explained event was traced back to its Bundle resource"


def test_meds_input_explains_with_extensions(scorer: Scorer, bundle_events: list[pd.DataFrame]) -> None:
    out = predict_frame(scorer, pd.DataFrame({"events": [_events_json(bundle_events[1])], "explain": [True],
                                              "tasks": ["readmission_30d"]}))
    ex = json.loads(out["explanation"].iloc[0])
    assert all(e["resource"] is None for e in ex["events"])
    ra = json.loads(out["risk_assessment"].iloc[0])
    assert "basis" not in ra
    events = [x for x in ra["extension"] if x["url"] == EXT_EVENT]
    assert len(events) == len(ex["events"])
    parts = {p["url"] for p in events[0]["extension"]}
    assert {"code", "attribution"} <= parts


def test_deployment_default_and_row_override(serving_dir: Path, bundle_texts: list[str]) -> None:
    on = Scorer(serving_dir)
    on.config = on.config.replace(explain=True, explain_top_k=2)
    out = predict_frame(on, pd.DataFrame({"bundle": bundle_texts[:2], "explain": [None, "false"],
                                          "tasks": ["readmission_30d"] * 2}))
    first, second = out["explanation"].tolist()
    assert first is not None and len(json.loads(first)["events"]) == 2 and second is None


@pytest.mark.parametrize(("value", "expected"), [(True, True), ("yes", True), ("0", False), (None, None),
                                                 ("", None), ("FALSE", False)])
def test_parse_flag(value: object, expected: bool | None) -> None:
    assert parse_flag(0, "explain", value) is expected


def test_a_bad_flag_is_refused_without_echo(scorer: Scorer, bundle_texts: list[str]) -> None:
    with pytest.raises(InputError) as err:
        predict_frame(scorer, pd.DataFrame({"bundle": bundle_texts[:1], "explain": ["ZZMARKERZZ"]}))
    assert err.value.status == 400 and "row 0: field 'explain'" in str(err.value)
    assert "ZZMARKERZZ" not in str(err.value)
