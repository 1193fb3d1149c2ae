"""Explanation switches outside the request rows: ``ehrfm register --explain / --explain_top_k`` set the
model's served defaults (serve.json), and ``POST /fhir/$risk?explain=`` overrides them per request."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response

from ehrfm.cli import main
from ehrfm.config.serve import RegisterConfig, RegisterSummary, ServeConfig
from ehrfm.config.server import CdsConfig
from ehrfm.explain.fhir import EXT_EXPLANATION
from ehrfm.serve.core import Scorer
from ehrfm.serve.server import app
from ehrfm.serve.server.protocol import Job
from ehrfm.serve.server.worker import Handler


def _register_capturing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *flags: str) -> ServeConfig:
    """Run ``ehrfm register`` with ``flags``, the MLflow packaging replaced by a capture of the ServeConfig
    it would have written to serve.json."""
    import ehrfm.serve.register as reg

    seen: list[ServeConfig] = []

    def fake_register(source: str, name: str, alias: str | None, **kw: Any) -> RegisterSummary:
        seen.append(kw["config"])
        return RegisterSummary(name=name, version="1", alias=alias, model_uri="m", run_id="r",
                               tracking_uri="t", serve_uri="models:/x/1")

    monkeypatch.setattr(reg, "register", fake_register)
    assert main(["register", "--run", str(tmp_path), "--root", str(tmp_path / "root"), *flags]) == 0
    assert len(seen) == 1
    return seen[0]


def test_register_sets_the_served_explain_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    default = _register_capturing(monkeypatch, tmp_path)
    assert (default.explain, default.explain_top_k) == (False, 5)
    on = _register_capturing(monkeypatch, tmp_path, "--explain", "true", "--explain_top_k", "3", "--strict",
                             "true")
    assert (on.explain, on.explain_top_k, on.strict) == (True, 3, True)
    # what serve.json would hold reads back the same
    assert ServeConfig.from_dict(json.loads(json.dumps(on.to_dict()))).explain_top_k == 3


@pytest.mark.parametrize("bad", [0, 101])
def test_register_refuses_a_bad_top_k_naming_the_field(bad: int) -> None:
    with pytest.raises(ValueError, match="explain_top_k"):
        RegisterConfig(explain_top_k=bad)


def _risk_request(query: bytes) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/fhir/$risk", "query_string": query, "headers": [],
             "state": {"request_id": "rid-1", "fields": {}}}
    return Request(scope)


def test_risk_route_passes_explain_and_refuses_unknown_parameters(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    async def fake_score(request: Request, endpoint: str,
                         params: dict[str, str] | None = None) -> Response:
        seen.update(endpoint=endpoint, params=params)
        return Response(b"scored")

    monkeypatch.setattr(app, "_score", fake_score)
    got = asyncio.run(app.fhir_risk(_risk_request(b"explain=true&tasks=readmission_30d")))
    assert got.body == b"scored" and seen["params"] == {"explain": "true", "tasks": "readmission_30d"}
    refused = asyncio.run(app.fhir_risk(_risk_request(b"explains=1")))
    assert refused.status_code == 400 and b"explain" in refused.body


def _explained(reply_body: bytes) -> list[bool]:
    bundle = json.loads(reply_body)
    return [any(x["url"] == EXT_EXPLANATION for x in e["resource"].get("extension", []))
            for e in bundle["entry"] if e["resource"]["resourceType"] == "RiskAssessment"]


def test_risk_explain_parameter_overrides_the_served_default(serving_dir: Path,
                                                            bundle_texts: list[str]) -> None:
    body = bundle_texts[0].encode()
    off = Handler(Scorer(serving_dir), None, CdsConfig())
    on = Handler(Scorer(serving_dir), None, CdsConfig())
    on.scorer.config = on.scorer.config.replace(explain=True, explain_top_k=2)
    params = {"tasks": "readmission_30d"}

    def risk(h: Handler, **extra: str) -> list[bool]:
        reply = h.handle(Job("r", "fhir_risk", body, {**params, **extra}))
        assert reply.status == 200, reply.body[:200]
        return _explained(reply.body)

    assert risk(off) == [False] and risk(off, explain="true") == [True]
    assert risk(on) == [True] and risk(on, explain="false") == [False] and risk(on, explain="0") == [False]
    bad = off.handle(Job("r", "fhir_risk", body, {**params, "explain": "ZZMARKERZZ"}))
    assert bad.status == 400 and b"explain" in bad.body and b"ZZMARKERZZ" not in bad.body
