"""The stub FHIR R4 server (tests/helpers/fhir_stub.py) over real Synthea bundles: reads, patient
searches in both reference spellings, 4xx OperationOutcomes, bearer-token checks and the request log."""

from __future__ import annotations

import csv
import json
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from helpers.fhir_stub import SEARCH_TYPES, fhir_stub, load_bundle


def _get(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, Any, str]:
    """Status, parsed JSON body and Content-Type of one request (4xx/5xx included)."""
    req = urllib.request.Request(url, headers=headers or {}, method=method,
                                 data=b"{}" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read()), r.headers["Content-Type"]
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers["Content-Type"]


@pytest.fixture(scope="module")
def bundles(synthea_bundles: Path) -> list[dict[str, Any]]:
    """Two small real patient bundles (MANIFEST order by size) and one organisation-only file."""
    with open(synthea_bundles.parent / "MANIFEST.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    patients = sorted((r for r in rows if r["patient_id"]), key=lambda r: int(r["json_bytes"]))[:2]
    others = [r for r in rows if not r["patient_id"]][:1]
    return [load_bundle(synthea_bundles.parent / r["file"]) for r in patients + others]


def _patient(bundle: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = next(e["resource"] for e in bundle["entry"]
                                 if e["resource"]["resourceType"] == "Patient")
    return found


def test_read_patient_and_search_each_type(bundles: list[dict[str, Any]]) -> None:
    """Patient read returns the resource as held; each search type returns exactly that patient's resources
    of the type, for ``patient=<id>`` and ``patient=Patient/<id>``, in a searchset with total and fullUrl."""
    a, b = _patient(bundles[0]), _patient(bundles[1])
    with fhir_stub(bundles) as stub:
        assert stub.patient_ids == sorted([a["id"], b["id"]])
        status, body, ctype = _get(f"{stub.url}/Patient/{a['id']}")
        assert (status, body, ctype) == (200, a, "application/fhir+json")
        expected = Counter(e["resource"]["resourceType"] for e in bundles[0]["entry"])
        for rtype in SEARCH_TYPES:
            for value in (a["id"], f"Patient/{a['id']}"):
                status, found, _ = _get(f"{stub.url}/{rtype}?patient={value}&_count=500")
                assert status == 200, rtype
                assert (found["resourceType"], found["type"]) == ("Bundle", "searchset")
                assert found["total"] == len(found["entry"]) == expected.get(rtype, 0), rtype
                ids = {e["resource"]["id"] for e in bundles[0]["entry"]
                       if e["resource"]["resourceType"] == rtype}
                assert {e["resource"]["id"] for e in found["entry"]} == ids
                for e in found["entry"]:
                    assert e["fullUrl"] == f"{stub.url}/{rtype}/{e['resource']['id']}"
                    ref = (e["resource"].get("subject") or e["resource"]["patient"])["reference"]
                    assert ref == f"urn:uuid:{a['id']}"  # served as Synthea wrote it
        assert sum(expected.get(t, 0) for t in SEARCH_TYPES) > 0
        # the other patient's records never leak into this one's searches
        _, enc_b, _ = _get(f"{stub.url}/Encounter?patient={b['id']}")
        assert enc_b["total"] > 0
        assert not {e["resource"]["id"] for e in enc_b["entry"]} & {
            e["resource"]["id"] for e in bundles[0]["entry"]}


@pytest.mark.parametrize(("path", "status", "code"), [
    ("/Patient/no-such-id", 404, "not-found"),
    ("/Condition?patient=no-such-id", 404, "not-found"),
    ("/Frobnicate?patient=x", 404, "not-found"),
    ("/Patient/a/b", 404, "not-found"),
    ("/", 404, "not-found"),
    ("/Condition", 400, "required"),
    ("/Condition?patient=", 400, "required"),
])
def test_errors_are_operation_outcomes(bundles: list[dict[str, Any]], path: str, status: int,
                                       code: str) -> None:
    """Unknown ids, types and paths answer 404, a search without patient 400, each an OperationOutcome."""
    with fhir_stub(bundles) as stub:
        got, body, ctype = _get(stub.url + path)
    assert (got, body["resourceType"], body["issue"][0]["code"]) == (status, "OperationOutcome", code)
    assert ctype == "application/fhir+json"


def test_only_get(bundles: list[dict[str, Any]]) -> None:
    """Writes are refused with 405 (and recorded)."""
    with fhir_stub(bundles) as stub:
        status, body, _ = _get(f"{stub.url}/Patient", method="POST")
        assert (status, body["issue"][0]["code"]) == (405, "not-supported")
        assert stub.requests[0][:2] == ("POST", "/Patient")


def test_bearer_token_and_request_log(bundles: list[dict[str, Any]]) -> None:
    """With ``require_token`` only the right bearer token gets data; every request is logged with its
    parsed query and lower-cased headers, refused ones included."""
    pid = _patient(bundles[0])["id"]
    with fhir_stub(bundles, require_token="s3cret") as stub:
        assert _get(f"{stub.url}/Patient/{pid}")[0] == 401
        assert _get(f"{stub.url}/Patient/{pid}", {"Authorization": "Bearer wrong"})[0] == 401
        assert _get(f"{stub.url}/Patient/{pid}", {"Authorization": "s3cret"})[0] == 401
        status, body, _ = _get(f"{stub.url}/Observation?patient=Patient/{pid}",
                               {"Authorization": "Bearer s3cret"})
        assert (status, body["type"]) == (200, "searchset")
        assert [(m, p) for m, p, _, _ in stub.requests] == [("GET", f"/Patient/{pid}")] * 3 + [
            ("GET", "/Observation")]
        method, path, query, headers = stub.requests[-1]
        assert query == {"patient": [f"Patient/{pid}"]}
        assert headers["authorization"] == "Bearer s3cret"
        assert "authorization" not in stub.requests[0][3]


def test_stops_on_exit(bundles: list[dict[str, Any]]) -> None:
    """The port is closed once the context exits."""
    with fhir_stub(bundles) as stub:
        url = stub.url
        assert _get(f"{url}/Patient/{stub.patient_ids[0]}")[0] == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/Patient/{stub.patient_ids[0]}", timeout=2)
