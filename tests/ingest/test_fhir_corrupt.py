"""A deliberately corrupted corpus through the Spark path: every record mapped, rejected or skipped,
each reject located and explained, and the counts reconcile exactly."""

from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrfm.cli import main
from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.ingest.fhir.ids import subject_id_for
from ehrfm.ingest.fhir.tables import sort_events
from ehrfm.layout import MedsPaths
from ehrfm.schema import EVENT_COLUMNS

MAX_TIME = 1_893_456_000_000_000  # 2030-01-01
RX = {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361",
                  "display": "amlodipine"}]}
P1 = {"reference": "Patient/p1"}
SCT = "http://snomed.info/sct"
Expected = list[tuple[str, int, str | None, str | None, str | None, str]]


def _obs(oid: str, pid: str, when: str = "2020-01-01T10:00:00Z", **kw: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "id": oid, "status": "final",
            "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]}, "effectiveDateTime": when,
            "valueQuantity": {"value": 5.0, "unit": "mmol/L"}, **kw}


def _med_request(mid: str, med_ref: str) -> dict[str, Any]:
    return {"resourceType": "MedicationRequest", "id": mid, "status": "active", "intent": "order",
            "subject": P1, "authoredOn": "2020-01-02", "medicationReference": {"reference": med_ref}}


def _lines(items: list[Any]) -> bytes:
    return b"\n".join(x if isinstance(x, bytes) else json.dumps(x).encode() for x in items) + b"\n"


def build_corpus(root: Path) -> tuple[Expected, dict[str, int]]:
    """Write the corpus; return the expected rejects (file, index, type, id, field, reason substring) and
    totals."""
    ndjson = [
        {"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01", "gender": "female"},  # 0 mapped
        {"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"},  # 1 mapped
         "subject": P1, "period": {"start": "2020-01-01T09:00:00Z", "end": "2020-01-01T11:00:00Z"}},
        b'{"resourceType": "Observation", "id": "broken"',  # 2 malformed
        {k: v for k, v in _obs("nosubj", "p1").items() if k != "subject"},  # 3 no subject
        _obs("badtime", "p1", "2020-02-30T10:00:00Z"),  # 4 unparseable time
        {"resourceType": "Condition", "id": "c-old", "subject": P1,  # 5 before birth
         "code": {"coding": [{"system": SCT, "code": "44054006"}]}, "onsetDateTime": "1970-05-05"},
        {"resourceType": "Procedure", "id": "pr-future", "status": "completed", "subject": P1,  # 6 far future
         "code": {"coding": [{"system": SCT, "code": "1"}]}, "performedDateTime": "2999-01-01"},
        {"resourceType": "Foo", "id": "x"},  # 7 unknown type
        {"resourceType": "Claim", "id": "cl1"},  # 8 skipped
        _obs("invalid", "p1", valueQuantity={"value": "five"}),  # 9 invalid R4
        _med_request("mr-ok", "Medication/m1"),  # 10 mapped via meds file
        _med_request("mr-missing", "Medication/nope"),  # 11 unresolved
        b"",  # 12 blank: no record
        b"[1, 2]",  # 13 not an object
    ]
    (root / "resources.ndjson").write_bytes(_lines(ndjson))
    (root / "meds.ndjson.gz").write_bytes(gzip.compress(_lines([
        {"resourceType": "Medication", "id": "m1", "code": RX},
        {"resourceType": "Organization", "id": "org"}])))
    # a truncated gzip NDJSON: 30 observations, the last 12 bytes (trailer + part of the stream) cut off
    whole = gzip.compress(_lines([_obs(f"t{i}", "p1") for i in range(30)]))
    cut = whole[:-12]
    (root / "trunc.ndjson.gz").write_bytes(cut)
    complete = zlib.decompressobj(31).decompress(cut).count(b"\n")
    assert 1 <= complete < 30
    loinc = "http://loinc.org"
    bp = {k: v for k, v in _obs("bp", "x").items() if k != "valueQuantity"}
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:p2",
         "resource": {"resourceType": "Patient", "id": "p2", "birthDate": "1990-01-01"}},
        {"fullUrl": "urn:uuid:e2",
         "resource": {"resourceType": "Encounter", "id": "e2", "status": "finished",
                      "class": {"code": "EMER"}, "subject": {"reference": "urn:uuid:p2"},
                      "period": {"start": "2021-01-01T00:00:00Z"}}},
        {"fullUrl": "urn:uuid:o2", "resource": {**bp, "subject": {"reference": "urn:uuid:p2"}, "component": [
            {"code": {"coding": [{"system": loinc, "code": "8480-6"}]}, "valueQuantity": {"value": 120}},
            {"code": {"coding": [{"system": loinc, "code": "8462-4"}]}, "valueQuantity": {"value": 80}}]}},
        {"request": {"method": "DELETE", "url": "Patient/old"}},
        {"fullUrl": "urn:uuid:z", "resource": {"resourceType": "Organization", "id": "z"}},
        {"fullUrl": "urn:uuid:f", "resource": {"resourceType": "Foo", "id": "f"}},
    ]}
    (root / "bundle.json").write_text(json.dumps(bundle, indent=2))
    (root / "trunc_bundle.json.gz").write_bytes(gzip.compress(json.dumps(bundle).encode())[:-30])
    (root / "broken.json").write_text('{"resourceType": "Bundle", "entry": [')
    (root / "empty.json").write_text("")
    (root / "notes.txt").write_text("not an input: wrong suffix inside a folder")
    expected = [
        ("resources.ndjson", 2, None, None, None, "malformed JSON"),
        ("resources.ndjson", 3, "Observation", "nosubj", "subject|patient", "missing subject reference"),
        ("resources.ndjson", 4, "Observation", "badtime", "effectiveDateTime", "invalid R4B Observation"),
        ("resources.ndjson", 5, "Condition", "c-old", "onsetDateTime", "before the subject's birth"),
        ("resources.ndjson", 6, "Procedure", "pr-future", "performedDateTime", "far future"),
        ("resources.ndjson", 7, "Foo", "x", "resourceType", "unknown resourceType 'Foo'"),
        ("resources.ndjson", 9, "Observation", "invalid", "valueQuantity.value", "invalid R4B Observation"),
        ("resources.ndjson", 11, "MedicationRequest", "mr-missing", "medicationReference", "not found"),
        ("resources.ndjson", 13, None, None, None, "not a resource object"),
        ("trunc.ndjson.gz", complete, None, None, None, "truncated gzip"),
        ("bundle.json", 3, None, None, "entry.resource", "Bundle entry without a resource"),
        ("bundle.json", 5, "Foo", "f", "resourceType", "unknown resourceType 'Foo'"),
        ("trunc_bundle.json.gz", 0, None, None, None, "truncated gzip"),
        ("broken.json", 0, None, None, None, "malformed JSON file"),
        ("empty.json", 0, None, None, None, "empty file"),
    ]
    # records: 13 ndjson lines + 2 meds + (complete + 1) trunc + 6 bundle entries + 3 one-record files
    n_in = 13 + 2 + complete + 1 + 6 + 3
    mapped = 3 + complete + 3  # p1, e1, mr-ok; truncated file's complete lines; p2, e2, bp
    skipped = 1 + 2 + 1  # Claim; Medication + Organization; bundle Organization
    # p1 (gender, birth), e1 start/end, mr-ok, obs, p2 (gender, birth), e2 start, bp x2
    events = 2 + 2 + 1 + complete + 2 + 1 + 2
    return expected, {"in": n_in, "mapped": mapped, "rejected": len(expected), "skipped": skipped,
                      "events": events, "duplicate": 0}


@pytest.mark.spark
def test_corrupted_corpus_rejects_and_reconciles(spark: Any, tmp_path: Path) -> None:
    corpus = tmp_path / "in"
    corpus.mkdir()
    expected, totals = build_corpus(corpus)
    out = tmp_path / "out"
    # through the CLI (ehrfm ingest fhir), which reuses the test's active Spark session
    argv = ["ingest", "fhir", "--input", f"[{corpus}]", "--meds", str(out), "--validate", "full",
            "--max_time", "2030-01-01"]
    assert main(argv) == 0
    paths = MedsPaths(out)
    result = json.loads(paths.summary.read_text())

    assert result["totals"] == totals and result["reconciled"]
    assert result["files"] == 7  # notes.txt is not picked up from a folder
    rejects = pq.read_table(paths.rejects).to_pylist()
    got = sorted((Path(r["source_file"]).name, r["record_index"], r["resource_type"], r["resource_id"],
                  r["field"], r["reason"]) for r in rejects)
    assert [g[:5] for g in got] == sorted(e[:5] for e in expected)
    for g, e in zip(got, sorted(expected), strict=True):
        assert e[5] in g[5], (g, e)
    assert result["by_resource_type"]["Foo"]["rejected"] == 2
    assert not (out / "_fhir_tmp").exists()

    # events: the resolved cross-file medication, and the bundle's urn:uuid subject -> Patient p2
    events = pq.read_table(paths.data).to_pylist()
    assert sum(e["code"] == "MEDICATION//RXNORM//197361" for e in events) == 1
    codes = pq.read_table(paths.codes).to_pylist()
    assert {"code": "MEDICATION//RXNORM//197361", "description": "amlodipine", "parent_codes": None} in codes
    data = pq.read_table(paths.data).select(EVENT_COLUMNS)
    p2 = sort_events(data.filter(pc.equal(data["subject_id"], subject_id_for("p2"))))
    one = bundle_to_events((corpus / "bundle.json").read_bytes(), validate="full",
                           max_time_us=MAX_TIME).events
    assert p2.to_pylist() == one.to_pylist()
    assert [e["code"] for e in one.to_pylist()] == [
        "GENDER//UNKNOWN", "MEDS_BIRTH", "OBSERVATION//LOINC//8462-4", "OBSERVATION//LOINC//8480-6",
        "ENCOUNTER//EMERGENCY//START"]
