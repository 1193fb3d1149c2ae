"""The compiled / positional hot paths of the FHIR mapper give the answers of their plain twins."""

from __future__ import annotations

from typing import Any

import pytest

from ehrfm.ingest.fhir.mapper import (
    MapContext,
    MappingError,
    map_resource,
    reference_id,
    subject_and_ref,
    subject_of,
)
from ehrfm.ingest.fhir.process import MAPPED, Outcome, process_record
from ehrfm.ingest.fhir.records import Record
from ehrfm.ingest.fhir.rules import compile_path, first_path, get_path, load_rules
from ehrfm.ingest.fhir.spark_rows import event_row, outcome_row, row

OBS: dict[str, Any] = {
    "resourceType": "Observation", "id": "o1", "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "1-1", "display": "x"}]},
    "subject": {"reference": "Patient/7"}, "encounter": {"reference": "Encounter/e1"},
    "effectiveTiming": {"event": ["2019-01-02T03:04:05Z"]},
    "effectivePeriod": {"start": ""}, "valueQuantity": {"value": 2.5, "unit": "mg"},
}


def _walk(obj: Any, path: str) -> Any:
    """The uncompiled walk the rules used before (the reference twin of :func:`get_path`)."""
    cur = obj
    for part in path.split("."):
        if isinstance(cur, dict):
            cur = cur.get(part)
        elif isinstance(cur, list) and part.isdigit():
            idx = int(part)
            cur = cur[idx] if idx < len(cur) else None
        else:
            return None
        if cur is None:
            return None
    return cur


@pytest.mark.parametrize("path", ["effectiveTiming.event.0", "effectiveTiming.event.1",
                                  "effectivePeriod.start", "code.coding.0.code", "code.coding.x",
                                  "subject.reference.0", "missing.a",
                                  "valueQuantity.value", "status", "code.coding"])
def test_get_path_matches_the_uncompiled_walk(path: str) -> None:
    odd = {**OBS, "code": {"coding": [{"code": "c"}], "0": "digit key"}}
    for obj in (OBS, odd, [OBS], "text", None):
        assert get_path(obj, path) == _walk(obj, path), (path, obj)


def test_compile_path_steps() -> None:
    assert compile_path("effectiveTiming.event.0") == ("effectiveTiming", "event", 0)
    assert get_path({"a": {"0": 1}}, "a.0") == 1  # a digit step on an object is a key, as before


def test_first_path_skips_empty_values() -> None:
    assert first_path(OBS, ("effectivePeriod.start", "effectiveTiming.event.0")) == (
        "effectiveTiming.event.0", "2019-01-02T03:04:05Z")
    assert first_path(OBS, ("nothing", "effectivePeriod.start")) == (None, None)
    assert first_path([{"a": 1}], ("0",)) == ("0", {"a": 1})


@pytest.mark.parametrize("ref,expected", [
    ("Patient/1", "1"), ("a/b/c", "c"), ("Patient/", None), ("/x", "x"), ("x", "x"), ("urn:uuid:a/b", "a/b"),
    ("urn:oid:1.2", "1.2"), ("Patient/1/_history/2", "1"), ("http://x/fhir/Patient/1", "1"),
    ({"reference": "Patient/5"}, "5"), (None, None), ("", None), ("urn:uuid:/x", "/x"), ("_history/x", None)])
def test_reference_id_fast_path(ref: Any, expected: str | None) -> None:
    assert reference_id(ref) == expected


@pytest.mark.parametrize("ref", ["Group/1", "a/b/c", "/x", "Encounter/1/_history/3"])
def test_reference_id_wrong_type(ref: str) -> None:
    with pytest.raises(MappingError):
        reference_id(ref, "Patient")


def test_precomputed_subject_gives_the_same_mapping() -> None:
    rules = load_rules()
    ctx = MapContext(rules=rules, max_time_us=10**18)
    sid = subject_of(OBS, rules)
    assert sid == 7
    assert map_resource(OBS, ctx, sid) == map_resource(OBS, ctx)
    rec = Record("f", 3, resource=OBS)
    assert process_record(rec, ctx, False, sid).events == process_record(rec, ctx, False).events


def test_positional_rows_match_named_rows() -> None:
    rules = load_rules()
    ctx = MapContext(rules=rules, max_time_us=10**18)
    rec = Record("f.ndjson", 3, resource=OBS)
    out = process_record(rec, ctx, False)
    assert out.status == MAPPED and out.events
    e = out.events[0]
    assert event_row(e, "f.ndjson", 3) == row("E", **e, source_file="f.ndjson", record_index=3)
    k = outcome_row(rec, out, rules)
    assert k == outcome_row(rec, out, rules, 7)
    named = row("K", source_file="f.ndjson", record_index=3, resource_type="Observation", resource_id="o1",
                status=MAPPED, n_events=1, subject_id=7, field="subject", reason=None,
                updated=k[-2], digest=k[-1])
    assert k == named and k[-1] is not None
    patient = Record("p.ndjson", 0, resource={"resourceType": "Patient", "id": "7"})
    rejected = Outcome("rejected", rejects=[{"field": "birthDate", "reason": "r"}])
    assert outcome_row(patient, rejected, rules)[1] == 7 == outcome_row(patient, rejected, rules, 7)[1]


@pytest.mark.parametrize("res", [
    OBS, {**OBS, "subject": {"reference": "Group/1"}}, {**OBS, "subject": None, "patient": "Patient/x"},
    {"resourceType": "Observation"}, {"resourceType": "Patient", "id": "p9"}, {"resourceType": "Patient"},
    {**OBS, "subject": {"reference": "Patient/"}}, {**OBS, "subject": {"display": "no reference"}}])
def test_subject_and_ref(res: dict[str, Any]) -> None:
    rules = load_rules()
    sid, pid = subject_and_ref(res, rules)
    assert sid == subject_of(res, rules)
    # the id the population path records beside the subject (I rows): the Patient's id or the reference's
    if sid is None:
        assert pid is None
    elif res["resourceType"] == "Patient":
        assert pid == res["id"]
    else:
        ref = next(res[f] for f in rules.subject_fields if res.get(f) is not None)
        assert pid == reference_id(ref)
