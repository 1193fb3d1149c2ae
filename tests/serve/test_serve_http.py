"""`mlflow models serve` of models:/ehrfm@champion: real Synthea bundles in, predictions + RiskAssessments
out;
malformed input answered with 4xx naming the problem while the server keeps answering; the payload never
reaches the server's log; the server is stopped by its process group with bounded waits."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers.mlflow_server import group_alive, serve

from ehrfm.serve.core import Scorer
from ehrfm.serve.pyfunc import example_bundle, predict_frame

pytestmark = pytest.mark.slow
MAX_BYTES = 1_000_000  # the server's EHRFM_SERVE_MAX_REQUEST_BYTES: the test bundles are ~250 kB


def _post(url: str, body: bytes | str, timeout: float = 60) -> tuple[int, Any]:
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


@pytest.fixture(scope="module")
def server(registry: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """Base URL and log file of a running scoring server; afterwards its process group must be gone."""
    log = tmp_path_factory.mktemp("server") / "server.log"
    env = {"EHRFM_SERVE_MAX_REQUEST_BYTES": str(MAX_BYTES), "OMP_NUM_THREADS": "1"}
    with serve("models:/ehrfm@champion", log, tracking_uri=registry["tracking_uri"], env=env) as srv:
        assert group_alive(srv.pgid)
        yield srv.url, log
    assert not group_alive(srv.pgid), "stray scoring-server processes left running"


def _patient(bundle_text: str) -> tuple[str, str]:
    pat = next(e["resource"] for e in json.loads(bundle_text)["entry"]
               if e["resource"]["resourceType"] == "Patient")
    return pat["id"], pat["name"][0]["family"]


def test_serves_bundles_and_rejects_bad_input(server: tuple[str, Path], bundle_texts: list[str],
                                              scorer: Scorer) -> None:
    url, log = server
    inv = f"{url}/invocations"
    texts = bundle_texts[:3]
    status, body = _post(inv, json.dumps({"dataframe_records": [{"bundle": t} for t in texts]}))
    assert status == 200, body
    got = pd.DataFrame(body["predictions"])
    want = predict_frame(scorer, pd.DataFrame({"bundle": texts}))
    assert len(got) == 3 * len(scorer.tasks) and list(got["task"]) == list(want["task"])
    assert list(got["patient_id"]) == list(want["patient_id"])
    np.testing.assert_allclose(got["prob"].dropna().astype(float), want["prob"].dropna().astype(float),
                               rtol=1e-5)
    for ra in got["risk_assessment"]:
        res = json.loads(ra)
        assert res["resourceType"] == "RiskAssessment" and res["status"] == "final" and res["prediction"]

    # the {"inputs": ...} form with an explicit prediction_time
    status, body = _post(inv,
                         json.dumps(
                             {"inputs": [{"bundle": texts[0], "prediction_time": "2015-01-01T00:00:00Z"}]}))
    assert status == 200, body
    assert {p["prediction_time"] for p in body["predictions"]} == {"2015-01-01T00:00:00+00:00"}

    # a bad resource is left out: scored on the rest, flagged partial, the reject in an OperationOutcome
    bad_obs = example_bundle()
    bad_obs["entry"][2]["resource"]["valueQuantity"]["value"] = "ZZMARKERZZ"
    status, body = _post(inv, json.dumps({"dataframe_records": [{"bundle": json.dumps(bad_obs)}]}))
    assert status == 200, body
    assert all(p["partial"] for p in body["predictions"]) and "ZZMARKERZZ" not in json.dumps(body)
    issues = json.loads(body["predictions"][0]["issues"])
    assert issues["resourceType"] == "OperationOutcome"
    assert issues["issue"][0]["expression"] == ["Observation.valueQuantity.value"]

    no_patient = {**example_bundle(), "entry": example_bundle()["entry"][1:]}
    cases = [
        ("{this is not json", "Invalid input"),
        (json.dumps({"dataframe_records": [{"bundle": "{broken"}]}), "field 'bundle' is not valid JSON"),
        (json.dumps({"dataframe_records": [{"bundle": json.dumps(no_patient)}]}),
         "exactly one Patient resource, found 0"),
        (json.dumps({"dataframe_records": [{"bundle": texts[0], "prediction_time": "2099-01-01T00:00:00Z"}]}),
         "max_clock_skew_s=300"),
        (json.dumps({"dataframe_records": [{"bundle": texts[0] + " " * MAX_BYTES}]}),
         f"max_request_bytes={MAX_BYTES:,}"),
        (json.dumps({"dataframe_records": [{"bundle": texts[0], "tasks": "ZZMARKERZZ"}]}),
         "field 'tasks': item 0 is not a served task"),
    ]
    for payload, needle in cases:
        status, body = _post(inv, payload)
        assert 400 <= status < 500, (status, body)
        assert needle in body.get("message", ""), (needle, body)
        assert _patient(texts[0])[0] not in json.dumps(body), "the error response echoes patient data"
        assert "ZZMARKERZZ" not in json.dumps(body), "the error response echoes the request"
        ok, _ = _post(inv, json.dumps({"dataframe_records": [{"bundle": json.dumps(example_bundle())}]}))
        assert ok == 200, (needle, _)  # still answering

    text = log.read_text(errors="replace")
    for t in texts:
        pid, family = _patient(t)
        assert pid not in text and family not in text, "patient data reached the server log"
    assert "ZZMARKERZZ" not in text
