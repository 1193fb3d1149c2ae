"""``ehrfm serve`` as a live process: hostile requests, partial records, auth, metrics, CDS Hooks, a killed
worker under load, and a deadline that stops the work.

Every probe plants a marker string in the content it sends; after the probes no marker may appear in the
server's structured log or in anything the process (front or workers) wrote to its standard streams, and
no answer may echo it, carry a stack trace or a local path.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import psutil
import pytest
from helpers.cds_schema import validate as validate_cds
from helpers.fhir_stub import fhir_stub
from helpers.mlflow_server import ehrfm_serve, group_alive
from helpers.tiny_model import tiny_serving_dir

from ehrfm.config.serve import Limits, ServeConfig

pytestmark = pytest.mark.slow
TOKEN = "test-token-0123456789abcdef"
MARK = "ZZPLANTED"
LIMITS = Limits(max_request_bytes=4_000_000, max_body_bytes=6_000_000, max_events=20_000, max_patients=8,
                max_json_depth=64, max_json_elements=400_000, max_resources=3_000)
PREFETCH_TYPES = {"Patient": "patient", "Encounter": "encounters", "Condition": "conditions",
                  "Observation": "observations", "MedicationRequest": "medications"}


@dataclass
class Live:
    """A running server and what the probes planted."""

    url: str
    log: Path
    out: Path
    pgid: int
    stub_url: str
    folder: Path
    planted: list[str] = field(default_factory=list)

    def mark(self) -> str:
        """A fresh marker string, remembered for the final log check."""
        m = f"{MARK}{len(self.planted):03d}X"
        self.planted.append(m)
        return m


def request(url: str, body: bytes | str | None = None, *, method: str | None = None,
            ctype: str | None = "application/json", token: str | None = TOKEN,
            headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one HTTP request (errors included)."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"))
    if ctype and data is not None:
        req.add_header("Content-Type", ctype)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def _bundle_with_marker(text: str, marker: str) -> dict[str, Any]:
    b = json.loads(text)
    pat = next(e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "Patient")
    pat["name"] = [{"family": marker, "given": [marker]}]
    return b


def _records(bundle: dict[str, Any] | str, **extra: Any) -> str:
    text = bundle if isinstance(bundle, str) else json.dumps(bundle)
    return json.dumps({"dataframe_records": [{"bundle": text, **extra}]})


def _clean(live: Live, status: int, body: bytes) -> dict[str, Any]:
    """An error answer of ours: JSON, no marker, no traceback, no path."""
    text = body.decode("utf-8", "replace")
    assert MARK not in text, f"payload echoed in a {status} answer"
    assert "Traceback" not in text and "/site-packages/" not in text and "/ehrfm/" not in text
    out: dict[str, Any] = json.loads(text)
    return out


@pytest.fixture(scope="module")
def synthea_texts(synthea_bundles: Path) -> list[str]:
    """Two small and the largest real Synthea bundles (JSON text)."""
    import csv

    with open(synthea_bundles.parent / "MANIFEST.csv", newline="") as fh:
        rows = sorted((r for r in csv.DictReader(fh) if r["patient_id"]), key=lambda r: int(r["json_bytes"]))
    return [gzip.open(synthea_bundles.parent / r["file"]).read().decode()
            for r in (rows[0], rows[1], rows[-1])]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, bundle_events: list[pd.DataFrame],
         synthea_texts: list[str]) -> Iterator[Live]:
    """A stub FHIR server and ``ehrfm serve`` (2 workers, bearer token, tight limits) allowed to read it."""
    tmp = tmp_path_factory.mktemp("server")
    folder = tiny_serving_dir(pd.concat(bundle_events, ignore_index=True), tmp / "model",
                              config=ServeConfig(limits=LIMITS))
    with fhir_stub([json.loads(t) for t in synthea_texts[:2]], require_token="stub-token") as stub:
        env = {"EHRFM_SERVE_TOKEN": TOKEN, "OMP_NUM_THREADS": "1"}
        args = ["--workers", "2", "--timeout_s", "60", "--log_file", str(tmp / "requests.log"),
                "--cds.allowed_fhir_servers", f"[{stub.url}]"]
        with ehrfm_serve(str(folder), tmp / "process.log", args=args, env=env) as srv:
            yield Live(srv.url, tmp / "requests.log", tmp / "process.log", srv.pgid, stub.url, folder)
        assert not group_alive(srv.pgid), "stray server processes left running"


def test_scores_and_answers_every_protocol(live: Live, synthea_texts: list[str]) -> None:
    status, headers, body = request(f"{live.url}/invocations", _records(synthea_texts[0]))
    assert status == 200, body[:300]
    preds = json.loads(body)["predictions"]
    assert {p["task"] for p in preds} == {"readmission_30d", "death_1y_tte", "next_visit_codes"}
    assert all(p["prediction_time"].endswith("+00:00") and p["partial"] is False for p in preds)
    assert headers.get("x-request-id")
    # the server scores exactly as the in-process function behind the pyfunc and Spark scoring
    from ehrfm.serve.core import Scorer
    from ehrfm.serve.pyfunc import predict_frame

    want = predict_frame(Scorer(live.folder), pd.DataFrame([{"bundle": synthea_texts[0]}]))
    assert [p["task"] for p in preds] == list(want["task"])
    for got, (_, exp) in zip(preds, want.iterrows(), strict=True):
        for col in ("prob", "risk"):
            assert (got[col] is None) == (exp[col] is None)
            if got[col] is not None:
                assert got[col] == pytest.approx(exp[col], rel=1e-6)
        assert got["prediction_time"] == exp["prediction_time"] and got["partial"] == exp["partial"]
    # dataframe_split and inputs give the same probabilities
    for env in ({"dataframe_split": {"columns": ["bundle"], "data": [[synthea_texts[0]]]}},
                {"inputs": {"bundle": [synthea_texts[0]]}}):
        s2, _, b2 = request(f"{live.url}/invocations", json.dumps(env))
        assert s2 == 200 and [p["prob"] for p in json.loads(b2)["predictions"]] == [p["prob"] for p in preds]
    # FHIR-native: a Bundle of RiskAssessments that validate, readable back by id
    status, headers, body = request(f"{live.url}/fhir/$risk", synthea_texts[0], ctype="application/fhir+json")
    assert status == 200 and headers["content-type"].startswith("application/fhir+json")
    bundle = json.loads(body)
    from fhir.resources.R4B.bundle import Bundle

    Bundle.model_validate(bundle)
    ras = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "RiskAssessment"]
    assert len(ras) == 3
    binary = next(r for r in ras if r["code"]["text"] == "readmission_30d")
    want = next(p["prob"] for p in preds if p["task"] == "readmission_30d")
    assert binary["prediction"][0]["probabilityDecimal"] == pytest.approx(want, rel=1e-6)
    status, _, body = request(f"{live.url}/fhir/RiskAssessment/{binary['id']}")
    assert status == 200 and json.loads(body)["id"] == binary["id"]
    # health, version, metrics; /ping open without a token, docs off
    assert request(f"{live.url}/ping", token=None)[0] == 200
    health = json.loads(request(f"{live.url}/health")[2])
    assert health["ready"] == 2
    version = json.loads(request(f"{live.url}/version")[2])
    assert version["tasks"]["readmission_30d"] == "binary"
    metrics = request(f"{live.url}/metrics")[2].decode()
    assert 'ehrfm_requests_total{route="invocations",status="200"}' in metrics
    assert "ehrfm_request_seconds_bucket" in metrics
    for path in ("/docs", "/openapi.json"):
        assert request(f"{live.url}{path}")[0] == 404


def test_auth(live: Live, synthea_texts: list[str]) -> None:
    for path, body in (("/invocations", _records(synthea_texts[0])), ("/version", None), ("/metrics", None),
                       ("/cds-services", None)):
        for token in (None, "wrong-token-0123456789"):
            status, headers, _ = request(f"{live.url}{path}", body, token=token)
            assert status == 401 and headers.get("www-authenticate") == "Bearer", (path, token)


def test_partial_records(live: Live, synthea_texts: list[str]) -> None:
    b = json.loads(synthea_texts[0])
    obs = next(e["resource"] for e in b["entry"] if e["resource"]["resourceType"] == "Observation"
               and "valueQuantity" in e["resource"])
    marker = live.mark()
    obs["valueQuantity"]["value"] = marker
    status, headers, body = request(f"{live.url}/invocations", _records(b))
    assert status == 200, body[:300]
    preds = json.loads(body)["predictions"]
    assert all(p["partial"] for p in preds) and headers.get("x-ehrfm-partial") == "true"
    assert MARK not in body.decode()
    issues = json.loads(preds[0]["issues"])
    assert issues["resourceType"] == "OperationOutcome" and issues["issue"]
    status, _, body = request(f"{live.url}/fhir/$risk", json.dumps(b), ctype="application/fhir+json")
    types = [e["resource"]["resourceType"] for e in json.loads(body)["entry"]]
    assert status == 200 and "OperationOutcome" in types
    status, _, body = request(f"{live.url}/fhir/$risk?strict=true", json.dumps(b),
                              ctype="application/fhir+json")
    assert status == 422 and _clean(live, status, body)["resourceType"] == "OperationOutcome"
    status, _, body = request(f"{live.url}/invocations",
                              json.dumps({"dataframe_records": [{"bundle": json.dumps(b)}],
                                          "params": {"strict": True}}))
    assert status == 422


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def test_hostile_requests(live: Live, synthea_texts: list[str]) -> None:
    inv = f"{live.url}/invocations"
    small = synthea_texts[0]
    probes: list[tuple[str, set[int], bytes, str, str]] = []  # (name, statuses, body, url, content type)

    def add(name: str, status: int | set[int], body: bytes | str, url: str = inv,
            ctype: str = "application/json") -> None:
        want = {status} if isinstance(status, int) else status
        probes.append((name, want, body.encode() if isinstance(body, str) else body, url, ctype))

    add("csv with a record", 415, _records(_bundle_with_marker(small, live.mark())), ctype="text/csv")
    add("no content type", 415, _records(_bundle_with_marker(small, live.mark())), ctype="")
    add("invalid JSON", 400, '{"dataframe_records": [{"bundle": "' + live.mark() + '"')
    add("not UTF-8", 400, b'{"dataframe_records": [{"bundle": "\xff\xfe' + live.mark().encode() + b'"}]}')
    add("unknown envelope key", 400, json.dumps({live.mark(): [1]}))
    add("huge tasks value", {413, 422}, json.dumps({"dataframe_records": [{"bundle": small,
                                                                    "tasks": live.mark() * 200_000}]}))
    add("unknown task", 422, _records(small, tasks=live.mark()))
    missing = json.loads(small)
    missing["entry"] = [e for e in missing["entry"] if e["resource"]["resourceType"] != "Patient"]
    missing["entry"][0]["resource"]["id"] = live.mark()
    add("references to a missing Patient", 422, _records(missing))
    add("inner bundle not JSON", 400, _records(live.mark() + "{"))
    add("deep JSON (parser limit)", 413, _records(_deep(100_000)))
    add("deep JSON (our limit)", 413, _records(_deep(100)))
    add("deep envelope", 413, _deep(100_000))
    add("too many JSON values", 413, _records("[" + ",".join(["0"] * 500_000) + "]"))
    many = json.loads(small)
    subject = next(e["fullUrl"] for e in many["entry"] if e["resource"]["resourceType"] == "Patient")
    tag = live.mark()
    many["entry"] += [{"resource": {"resourceType": "Observation", "id": f"{tag}{i}", "status": "final",
                                    "code": {"text": tag}, "subject": {"reference": subject}}}
                      for i in range(LIMITS.max_resources)]
    add("too many resources", 413, _records(many))
    add("prediction_time in 2099", 422, _records(_bundle_with_marker(small, live.mark()),
                                                 prediction_time="2099-01-01T00:00:00Z"))
    add("prediction_time not a time", {400, 422}, _records(small, prediction_time=live.mark()))
    add("too many rows", 413,
        json.dumps({"dataframe_records": [{"bundle": small}] * (LIMITS.max_patients + 1)}))
    add("$risk: not a Bundle", {400, 422}, json.dumps({"resourceType": "Patient", "id": live.mark()}),
        url=f"{live.url}/fhir/$risk", ctype="application/fhir+json")
    add("$risk: unknown parameter", 400, small, url=f"{live.url}/fhir/$risk?{live.mark()}=1",
        ctype="application/fhir+json")
    add("GET on invocations", 405, b"", url=inv)
    add("unknown route", 404, b"{}", url=f"{live.url}/{live.mark()}")
    for name, want, body, url, ctype in probes:
        if name == "GET on invocations":
            status, _, got = request(url, None, method="GET")
        else:
            status, _, got = request(url, body, ctype=ctype or None)
        assert status in want, (name, status, got[:300])
        out = _clean(live, status, got)
        assert out.get("message") or out.get("issue"), name
    # a body larger than the limit is refused before it is read: declared, or streamed without a length
    big = _records(_bundle_with_marker(small, live.mark() * 700_000)).encode()
    assert len(big) > LIMITS.max_body_bytes
    assert _raw_status(live.url, big, chunked=False) == 413
    assert _raw_status(live.url, big, chunked=True) == 413
    assert request(f"{live.url}/health")[0] == 200  # still serving
    assert request(inv, _records(small))[0] == 200


def _raw_status(url: str, body: bytes, *, chunked: bool) -> int:
    """POST ``body`` over a raw socket (with Content-Length, or chunked without one) and return the status
    the server answers, even when it answers and closes before the body is sent (what a limit should do)."""
    host, port = url.removeprefix("http://").split(":")
    length = b"Transfer-Encoding: chunked" if chunked else f"Content-Length: {len(body)}".encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Authorization: Bearer " + TOKEN.encode() + b"\r\n" + length + b"\r\n\r\n")
        step = 64_000
        try:
            for i in range(0, len(body), step):
                part = body[i:i + step]
                s.sendall(f"{len(part):x}\r\n".encode() + part + b"\r\n" if chunked else part)
            if chunked:
                s.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed while we were still sending
            pass
        head = s.recv(64).decode("latin-1")
    return int(head.split()[1])


def _prefetch(bundle: dict[str, Any]) -> dict[str, Any]:
    pat = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    out: dict[str, Any] = {"patient": pat}
    for rtype, key in PREFETCH_TYPES.items():
        if key != "patient":
            res = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]
            out[key] = {"resourceType": "Bundle", "type": "searchset", "total": len(res),
                        "entry": [{"resource": r} for r in res]}
    return out


def _hook(patient_id: str, **extra: Any) -> dict[str, Any]:
    return {"hook": "patient-view", "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
            "context": {"userId": "Practitioner/example", "patientId": patient_id}, **extra}


def test_cds_hooks(live: Live, synthea_texts: list[str]) -> None:
    status, _, body = request(f"{live.url}/cds-services")
    assert status == 200
    discovery = json.loads(body)
    validate_cds("discovery", discovery)
    service = discovery["services"][0]
    assert service["hook"] == "patient-view" and set(service["prefetch"]) == set(PREFETCH_TYPES.values())
    call = f"{live.url}/cds-services/{service['id']}"

    bundle = json.loads(synthea_texts[1])
    pid = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    req = _hook(pid, prefetch=_prefetch(bundle))
    validate_cds("request", req)
    answers = {}
    for how, hook in (("prefetch", req),
                      ("fetch", _hook(pid, fhirServer=live.stub_url,
                                      fhirAuthorization={"access_token": "stub-token", "token_type": "Bearer",
                                                         "expires_in": 300, "scope": "patient/*.read",
                                                         "subject": "ehrfm"}))):
        status, _, body = request(call, json.dumps(hook))
        assert status == 200, (how, body[:300])
        resp = json.loads(body)
        validate_cds("response", resp)
        answers[how] = resp["cards"]
    # same patient, same time: the cards' risks equal /invocations on the record the service saw
    subset = {"resourceType": "Bundle", "type": "collection",
              "entry": [e for e in bundle["entry"] if e["resource"]["resourceType"] in PREFETCH_TYPES]}
    for cards in answers.values():
        assert {c["summary"].split(":")[0] for c in cards} == {"readmission_30d", "death_1y_tte"}
        for card in cards:
            ra = card["suggestions"][0]["actions"][0]["resource"]
            status, _, body = request(card["links"][0]["url"])
            assert status == 200 and json.loads(body)["id"] == card["links"][0]["url"].rsplit("/", 1)[-1]
            status, _, body = request(f"{live.url}/invocations",
                                      _records(subset, prediction_time=ra["occurrenceDateTime"],
                                               tasks=ra["code"]["text"]))
            pred = json.loads(body)["predictions"][0]
            inv = (pred["prob"] if pred["prob"] is not None
                   else 1 - pred["survival"][-1])
            assert ra["prediction"][-1]["probabilityDecimal"] == pytest.approx(inv, rel=1e-5, abs=1e-7)
    # refusals: a FHIR server not on the allow list, another hook, no patient
    for hook, want in ((_hook(pid, fhirServer="http://169.254.169.254/" + live.mark()), 412),
                       ({**_hook(pid, prefetch=_prefetch(bundle)), "hook": live.mark()}, 400),
                       ({"hook": "patient-view", "hookInstance": "x", "context": {}}, 400)):
        status, _, body = request(call, json.dumps(hook))
        assert status == want, body[:300]
        _clean(live, status, body)
    assert request(f"{live.url}/cds-services/other", json.dumps(req))[0] == 404


def test_killed_worker_under_load(live: Live, synthea_texts: list[str]) -> None:
    body = _records(synthea_texts[0])
    results: list[int] = []
    stop = time.monotonic() + 12

    def client() -> None:
        while time.monotonic() < stop:
            results.append(request(f"{live.url}/invocations", body)[0])

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(3)
    front = psutil.Process(live.pgid)
    workers = [c for c in front.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
    assert len(workers) >= 2
    os.kill(workers[0].pid, signal.SIGKILL)
    for t in threads:
        t.join()
    lost = [s for s in results if s != 200]
    assert len(results) > 6 and len(lost) <= 1 and set(lost) <= {503}, results
    deadline = time.monotonic() + 120
    while json.loads(request(f"{live.url}/health")[2])["ready"] < 2:
        assert time.monotonic() < deadline, "the killed worker was not replaced"
        time.sleep(1)
    assert json.loads(request(f"{live.url}/health")[2])["restarts"] >= 1


def test_logs_hold_no_patient_content(live: Live) -> None:
    # runs after the probes above (file order): the request log and the process' own output
    assert live.planted, "no probe planted a marker"
    request_log = live.log.read_text()
    for line in request_log.splitlines():
        json.loads(line)  # every line is structured
    for text in (request_log, live.out.read_text(errors="replace")):
        assert MARK not in text
    outcomes = {json.loads(x).get("outcome") for x in request_log.splitlines()}
    assert {"media_type", "max_body_bytes", "unauthenticated", "ok"} <= outcomes


def test_deadline_stops_the_work(tmp_path: Path, bundle_events: list[pd.DataFrame],
                                 synthea_texts: list[str]) -> None:
    """One worker and a 0.25 s deadline: scoring three copies of the largest real bundle (~0.35 s each,
    cold) is cut off with 504, the worker that was doing it is gone (the work stopped), and its replacement
    answers the next request."""
    folder = tiny_serving_dir(pd.concat(bundle_events, ignore_index=True), tmp_path / "model")
    with ehrfm_serve(str(folder), tmp_path / "process.log", env={"OMP_NUM_THREADS": "1"},
                     args=["--workers", "1", "--timeout_s", "0.25", "--docs", "true"]) as srv:
        front = psutil.Process(srv.pgid)
        before = [c.pid for c in front.children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
        t0 = time.monotonic()
        heavy = json.dumps({"dataframe_records": [{"bundle": synthea_texts[2]}] * 3})
        status, _, body = request(f"{srv.url}/invocations", heavy, token=None)
        assert status == 504 and time.monotonic() - t0 < 5, body[:300]
        assert "timeout_s=0.25" in json.loads(body)["message"]
        time.sleep(0.5)
        assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                       for p in before), "the timed-out worker kept running"
        deadline = time.monotonic() + 120
        while json.loads(request(f"{srv.url}/health", token=None)[2])["ready"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        # cheap, so answered in time
        status, _, body = request(f"{srv.url}/invocations", "{not json", token=None)
        assert status == 400
        # a client that sends its body too slowly is cut off by the same deadline (408)
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n{\"dataframe_records\"")
            assert sock.recv(64).split()[1] == b"408"
        # asked for: the docs (no token configured on this server)
        assert request(f"{srv.url}/docs", token=None)[0] == 200
        assert "/fhir/$risk" in json.loads(request(f"{srv.url}/openapi.json", token=None)[2])["paths"]
