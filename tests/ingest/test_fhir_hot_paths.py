"""The compiled / positional hot paths of the FHIR mapper give the answers of their plain twins."""

from __future__ import annotations

import gc
import zlib
from collections.abc import Generator
from typing import Any, cast

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
from ehrfm.ingest.fhir.spark_rows import (
    GC_YOUNG_THRESHOLD,
    event_row,
    map_records,
    outcome_row,
    row,
    sampled,
    to_batch,
    young_gc_widened,
)

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
    full = row("E", **e, source_file="f.ndjson", record_index=3)
    short = event_row(e, "f.ndjson", 3)
    # the E row stops after record_index; the rest of ROW_SCHEMA is null
    assert short + (None,) * (len(full) - len(short)) == full and len(short) == 11
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


def test_short_event_rows_make_the_batch_of_full_rows() -> None:
    rules = load_rules()
    ctx = MapContext(rules=rules, max_time_us=10**18)
    rec = Record("f.ndjson", 3, resource=OBS)
    out = process_record(rec, ctx, False)
    k = outcome_row(rec, out, rules)
    events = [event_row(e, "f.ndjson", i) for i, e in enumerate(out.events * 3)]
    padded = [r + (None,) * (len(k) - len(r)) for r in events]
    assert to_batch(events).equals(to_batch(padded))
    assert to_batch(events).column("reason").null_count == len(events)
    # short rows mixed with full ones (not what the batcher makes, but allowed) are padded too
    assert to_batch([*events, k]).equals(to_batch([*padded, k]))
    assert to_batch([]).num_rows == 0


@pytest.mark.parametrize("path", ["f.ndjson", "/data/x/Observation.000.ndjson", "", "é/ü.ndjson"])
def test_sampled_with_the_file_crc_is_the_location_crc(path: str) -> None:
    crc = zlib.crc32(path.encode())
    for every in (0, 1, 7, 50):
        picks = [sampled(path, i, every) for i in range(500)]
        assert picks == [sampled(path, i, every, crc) for i in range(500)]
        # the plain definition: crc32 of "file#index"
        assert picks == [every > 0 and zlib.crc32(f"{path}#{i}".encode()) % every == 0 for i in range(500)]
    assert 0 < sum(sampled(path, i, 50) for i in range(5000)) < 250


def test_record_type_and_id_are_read_once() -> None:
    res = {"resourceType": "Observation", "id": "o1"}
    rec = Record("f", 0, resource=res)
    assert (rec.resource_type, rec.resource_id) == ("Observation", "o1")
    assert Record("f", 0, resource={"resourceType": 3, "id": 4}).resource_type is None
    assert Record("f", 0, error="x").resource_id is None
    assert rec == Record("f", 0, resource=res)  # the cache is not a dataclass field


def test_young_gc_widened_restores_the_thresholds() -> None:
    before = gc.get_threshold()
    with young_gc_widened():
        assert gc.get_threshold()[0] == max(before[0], GC_YOUNG_THRESHOLD)
        with young_gc_widened():  # re-entrant: the inner exit does not restore
            pass
        assert gc.get_threshold()[0] == max(before[0], GC_YOUNG_THRESHOLD)
    assert gc.get_threshold() == before
    # the mapping generator widens it while it runs and restores it when exhausted or closed early
    recs = [Record("f", i, resource={**OBS, "id": f"o{i}"}) for i in range(3)]
    gen = cast(Generator[tuple[Any, ...], None, None],
               map_records("f", recs, {}, {}, True, "none", 10**18, 50))
    next(gen)
    assert gc.get_threshold()[0] == max(before[0], GC_YOUNG_THRESHOLD)
    gen.close()
    assert gc.get_threshold() == before
    rows = list(map_records("f", recs, {}, {}, True, "none", 10**18, 50))
    assert gc.get_threshold() == before and sum(r[0] == "E" for r in rows) == 3


def _reference_id_plain(ref: Any, expected_type: str | None = None) -> str | None:
    """The uncached reference parse (the reference twin of :func:`reference_id`)."""
    if isinstance(ref, dict):
        ref = ref.get("reference")
    if not isinstance(ref, str) or not ref:
        return None
    if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
        return ref[9:] if ref.startswith("urn:uuid:") else ref[8:]
    parts = ref.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
        if not parts:
            return None
    if len(parts) >= 2:
        if expected_type and parts[-2] != expected_type:
            raise MappingError(None, f"reference {ref!r} is not a {expected_type}")
        return parts[-1] or None
    return parts[-1] or None


def _outcome(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except MappingError as e:
        return ("raised", e.reason)


def test_cached_reference_id_matches_the_plain_parse() -> None:
    import random

    rng = random.Random(7)
    pieces = ["Patient", "Encounter", "_history", "urn:uuid:", "urn:oid:", "", "1", "a", "http:", "x.y", "/"]
    refs = ["".join(rng.choice(pieces) + rng.choice(["/", "", "/"]) for _ in range(rng.randint(1, 5)))
            for _ in range(3000)]
    for ref in refs + refs:  # the second time from the cache
        for expected in (None, "Patient", "Encounter"):
            assert _outcome(reference_id, ref, expected) == _outcome(_reference_id_plain, ref, expected), ref
            assert (_outcome(reference_id, {"reference": ref}, expected)
                    == _outcome(_reference_id_plain, ref, expected))


def test_reference_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import ehrfm.ingest.fhir.mapper as mapper

    monkeypatch.setattr(mapper, "_REF_CACHE_MAX", 10)
    mapper._REF_CACHE.clear()
    for i in range(35):
        assert reference_id(f"Patient/{i}", "Patient") == str(i)
    assert 0 < len(mapper._REF_CACHE) <= 10


@pytest.mark.parametrize("value", [None, "", [], {}, 0, 0.0, False, "x", [1], {"a": 1}, True, 3, (), [None]])
def test_first_path_emptiness_is_the_literal_test(value: Any) -> None:
    got = first_path({"a": value, "b": "fallback"}, ("a", "b"))
    assert got == (("b", "fallback") if value in (None, "", [], {}) else ("a", value))


@pytest.mark.parametrize("rtype,status", [("Observation", "mapped"), ("Organization", "skipped"),
                                          ("NoSuchType", "rejected"), ("", "rejected")])
def test_process_record_kind_shortcut_matches_classify(rtype: str, status: str) -> None:
    from ehrfm.ingest.fhir.process import MAP, classify

    rules = load_rules()
    ctx = MapContext(rules=rules, max_time_us=10**18)
    res = {**OBS, "resourceType": rtype}
    assert process_record(Record("f", 0, resource=res), ctx, False).status == status
    if rtype:
        assert (classify(rtype, rules) == MAP) == (rtype in rules.resources)


def test_read_once_is_a_plain_property_read_once() -> None:
    res: dict[str, Any] = {"resourceType": "Patient", "id": "p"}
    rec = Record("f", 0, resource=res)
    assert "resource_type" not in vars(rec)
    assert rec.resource_type == "Patient" and vars(rec)["resource_type"] == "Patient"
    assert Record.resource_type.__doc__ and "resourceType" in Record.resource_type.__doc__
