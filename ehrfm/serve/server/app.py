"""The ASGI app of ``ehrfm serve`` (Starlette): routes, the guard around every request, metrics.

Routes (all JSON)::

    GET  /ping                      liveness (open without a token)
    GET  /health                    workers ready / restarted (503 when none is ready)
    GET  /version                   ehrfm and model versions, tasks
    GET  /metrics                   Prometheus text format
    POST /invocations               MLflow scoring protocol (dataframe_records | dataframe_split | inputs)
    POST /fhir/$risk                a FHIR Bundle in, a Bundle of RiskAssessments (+ OperationOutcome) out
    GET  /fhir/RiskAssessment/<id>  a RiskAssessment made in the last hour (what CDS cards link to)
    GET  /cds-services              CDS Hooks discovery
    POST /cds-services/<service>    CDS Hooks patient-view
    GET  /openapi.json, /docs       only with ``--docs true``

The guard, in order: request id (a sane ``X-Request-ID`` is kept, else a new one), bearer token, content
type (415), declared and streamed body size (413, before any parsing), the deadline over reading and
scoring (408 / 504), one structured log line and the metrics. The front never parses a body; workers do
(:mod:`ehrfm.serve.server.worker`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ehrfm import __version__
from ehrfm.config.server import ServerConfig
from ehrfm.serve.server.discovery import discovery
from ehrfm.serve.server.errors import FHIR_JSON, JSON, dialect, error_reply
from ehrfm.serve.server.logs import LOGGER
from ehrfm.serve.server.pool import DeadlineExceeded, WorkerLost, WorkerPool
from ehrfm.serve.server.protocol import Job, Reply

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
                   Awaitable[None]]
log = logging.getLogger(LOGGER)
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
OPEN_PATHS = ("/ping",)
RA_TTL_S, RA_CACHE = 3600.0, 10_000
ROUTE_NAMES = {"/ping": "ping", "/health": "health", "/version": "version", "/metrics": "metrics",
               "/invocations": "invocations", "/fhir/$risk": "fhir_risk", "/cds-services": "cds_discovery",
               "/openapi.json": "openapi", "/docs": "docs"}


def route_name(path: str) -> str:
    """Bounded metric label for a path (ids never become labels)."""
    if path in ROUTE_NAMES:
        return ROUTE_NAMES[path]
    if path.startswith("/fhir/RiskAssessment/"):
        return "fhir_read"
    return "cds_service" if path.startswith("/cds-services/") else "other"


@dataclass
class Metrics:
    """Prometheus metrics of one server (own registry: several apps can live in one test process)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter("ehrfm_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("ehrfm_request_seconds", "Request latency (read + score + answer)",
                                 ["route"],
                                 buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.rejects = Counter("ehrfm_rejects", "Requests answered 4xx/5xx, by outcome code", ["outcome"],
                               registry=r)
        self.partial = Counter("ehrfm_partial_rows", "Patients scored with some resources left out",
                               registry=r)
        self.workers = Gauge("ehrfm_workers_ready", "Scoring workers ready", registry=r)
        self.restarts = Gauge("ehrfm_worker_restarts", "Workers replaced since start", registry=r)


class ServerState:
    """Everything the routes share: config, pool, token, limits, metrics, recent RiskAssessments."""

    def __init__(self, cfg: ServerConfig, pool: WorkerPool, token: str | None, max_body_bytes: int | None,
                 model_uri: str, model_version: str) -> None:
        """``max_body_bytes`` None: the model's ``limits.max_body_bytes`` (known once workers are up)."""
        self.cfg, self.pool, self.token = cfg, pool, token
        self.max_body_bytes = max_body_bytes
        self.model_uri, self.model_version = model_uri, model_version
        self.metrics = Metrics()
        self.recent: OrderedDict[str, tuple[float, bytes]] = OrderedDict()

    def remember(self, resources: dict[str, bytes]) -> None:
        """Keep RiskAssessments for ``GET /fhir/RiskAssessment/<id>`` (bounded count and age)."""
        now = time.monotonic()
        for k, v in resources.items():
            self.recent[k] = (now, v)
        while len(self.recent) > RA_CACHE or (
                self.recent and next(iter(self.recent.values()))[0] < now - RA_TTL_S):
            self.recent.popitem(last=False)


def _json(obj: Any, status: int = 200, media_type: str = JSON) -> Response:
    return Response(orjson.dumps(obj), status, media_type=media_type)


def _reply(r: Reply, request_id: str) -> Response:
    headers = {"X-Request-ID": request_id}
    if r.meta.get("partial_rows"):
        headers["X-Ehrfm-Partial"] = "true"
    return Response(r.body, r.status, headers=headers, media_type=r.media_type)


class Guard:
    """Pure ASGI middleware: request id, auth, exception barrier, one log line, metrics."""

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        """Wrap ``app``."""
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        """Handle one HTTP request (lifespan and other scopes pass through)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get("x-request-id", "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        scope["state"]["fields"] = fields = {}
        path, route = scope.get("path", ""), route_name(scope.get("path", ""))
        seen = {"status": 500, "bytes_out": 0, "started": False}

        async def send_wrapped(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                seen["status"], seen["started"] = msg["status"], True
            elif msg["type"] == "http.response.body":
                seen["bytes_out"] = int(seen["bytes_out"]) + len(msg.get("body", b""))
            await send(msg)

        try:
            if self.state.token and path not in OPEN_PATHS and not self._authorized(headers):
                fields["outcome"] = "unauthenticated"
                r = error_reply(dialect(path), 401, "missing or invalid bearer token", rid)
                await Response(r.body, 401, headers={"WWW-Authenticate": "Bearer", "X-Request-ID": rid},
                               media_type=r.media_type)(scope, receive, send_wrapped)
            else:
                await self.app(scope, receive, send_wrapped)
        except Exception as e:  # never a stack trace to the client, never a message into the log
            fields.update(outcome="internal_error", error=type(e).__name__)
            if not seen["started"]:
                r = error_reply(dialect(path), 500, f"internal error (request id {rid})", rid)
                await Response(r.body, 500, media_type=r.media_type)(scope, receive, send_wrapped)
        status = int(seen["status"])
        elapsed = time.perf_counter() - t0
        m = self.state.metrics
        m.requests.labels(route, str(status)).inc()
        m.latency.labels(route).observe(elapsed)
        outcome = fields.get("outcome") or ("ok" if status < 400 else "error")
        if status >= 400:
            m.rejects.labels(str(outcome)).inc()
        level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
        log.log(level, "request", extra={"fields": {
            "event": "request", "request_id": rid, "method": scope.get("method"), "route": route,
            "status": status, "outcome": outcome, "bytes_in": fields.pop("bytes_in", 0),
            "bytes_out": seen["bytes_out"], "ms": round(1000 * elapsed, 1), **fields}})

    def _authorized(self, headers: dict[str, str]) -> bool:
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return (scheme.lower() == "bearer" and self.state.token is not None
                and hmac.compare_digest(token.strip().encode(), self.state.token.encode()))


# -- routes ----------------------------------------------------------------------------------------------
MEDIA = {"invocations": ("application/json",),
         "fhir_risk": ("application/fhir+json", "application/json"),
         "cds": ("application/json",)}


async def _read_body(request: Request, limit: int, deadline: float, fields: dict[str, Any]) -> bytes:
    """The body, refusing more than ``limit`` bytes (declared or streamed) before keeping it whole."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refusal(400, "invalid Content-Length header", "bad_length")
        if int(declared) > limit:
            fields["bytes_in"] = int(declared)
            raise _Refusal(413, f"request body of {int(declared):,} bytes is over the limit "
                                f"max_body_bytes={limit:,}", "max_body_bytes")
    chunks, size = [], 0

    async def read() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Refusal(413, f"request body is over the limit max_body_bytes={limit:,}",
                               "max_body_bytes")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), max(0.001, deadline - time.monotonic()))
    except asyncio.TimeoutError:
        raise _Refusal(408, "the request body was not received before the deadline", "read_timeout") from None
    except ClientDisconnect:
        raise _Refusal(400, "the client disconnected", "client_disconnect") from None
    finally:
        fields["bytes_in"] = size
    return b"".join(chunks)


class _Refusal(Exception):
    def __init__(self, status: int, message: str, outcome: str) -> None:
        super().__init__(message)
        self.status, self.message, self.outcome = status, message, outcome


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _score(request: Request, endpoint: str, params: dict[str, str] | None = None) -> Response:
    st: ServerState = request.app.state.server
    rid, fields = request.scope["state"]["request_id"], request.scope["state"]["fields"]
    kind = dialect(request.url.path)
    deadline = time.monotonic() + st.cfg.timeout_s
    try:
        if _media_type(request) not in MEDIA[endpoint]:
            raise _Refusal(415, f"Content-Type must be one of {list(MEDIA[endpoint])}", "media_type")
        limit = st.max_body_bytes or int((st.pool.info.limits if st.pool.info else {}).get(
            "max_body_bytes", 64_000_000))
        body = await _read_body(request, limit, deadline, fields)
        job = Job(rid, endpoint, body, params or {}, base_url=str(request.base_url))
        try:
            reply, worker = await st.pool.submit(job, deadline)
        except DeadlineExceeded as e:
            if e.stage == "queue":
                raise _Refusal(503, f"no scoring worker became free within timeout_s={st.cfg.timeout_s:g}; "
                                    "retry later", "busy") from None
            raise _Refusal(504, f"scoring did not finish within timeout_s={st.cfg.timeout_s:g}; the work was "
                                "stopped", "deadline") from None
        except WorkerLost:
            raise _Refusal(503, "the scoring worker stopped while handling this request; retry",
                           "worker_lost") from None
    except _Refusal as r:
        fields["outcome"] = r.outcome
        resp = _reply(error_reply(kind, r.status, r.message, rid, r.outcome), rid)
        if r.status == 503:
            resp.headers["Retry-After"] = "1"
        return resp
    fields.update({k: v for k, v in reply.meta.items() if isinstance(v, (int, float, str))}, worker=worker)
    if reply.meta.get("partial_rows"):
        st.metrics.partial.inc(int(reply.meta["partial_rows"]))
    st.remember(reply.resources)
    return _reply(reply, rid)


async def invocations(request: Request) -> Response:
    """MLflow scoring protocol."""
    return await _score(request, "invocations")


async def fhir_risk(request: Request) -> Response:
    """``$risk``: query parameters ``prediction_time``, ``tasks`` (comma-separated), ``strict``, ``explain``
    (true/false: attach attributions, overriding the model's served default, like a row's ``explain``)."""
    q = request.query_params
    params = {k: q[k] for k in ("prediction_time", "tasks", "strict", "explain") if k in q}
    if set(q) - set(params) - {"_format"}:
        rid = request.scope["state"]["request_id"]
        request.scope["state"]["fields"]["outcome"] = "bad_parameter"
        return _reply(error_reply("fhir", 400, "unknown query parameter; allowed: prediction_time, tasks, "
                                  "strict, explain", rid), rid)
    return await _score(request, "fhir_risk", params)


async def cds_call(request: Request) -> Response:
    """CDS Hooks service call."""
    st: ServerState = request.app.state.server
    if request.path_params["service"] != st.cfg.cds.service_id:
        rid = request.scope["state"]["request_id"]
        request.scope["state"]["fields"]["outcome"] = "not_found"
        return _reply(error_reply("cds", 404, "no such CDS service", rid), rid)
    return await _score(request, "cds")


async def cds_discovery(request: Request) -> Response:
    """CDS Hooks discovery."""
    st: ServerState = request.app.state.server
    info = st.pool.info
    tasks = st.cfg.cds.tasks or ([t for t, k in info.kinds.items() if k != "forecast"] if info else [])
    return _json(discovery(st.cfg.cds, info.model_name if info else "?", tasks))


async def fhir_read(request: Request) -> Response:
    """A recent RiskAssessment by id."""
    st: ServerState = request.app.state.server
    rid = request.scope["state"]["request_id"]
    hit = st.recent.get(request.path_params["id"])
    if hit is None or hit[0] < time.monotonic() - RA_TTL_S:
        request.scope["state"]["fields"]["outcome"] = "not_found"
        return _reply(error_reply("fhir", 404, "no RiskAssessment with this id (they are kept for one hour)",
                                  rid), rid)
    return Response(hit[1], 200, media_type=FHIR_JSON)


async def ping(request: Request) -> Response:
    """Liveness."""
    return Response(b"\n", 200, media_type="text/plain")


async def health(request: Request) -> Response:
    """Readiness: 200 while at least one worker is ready."""
    st: ServerState = request.app.state.server
    ready = st.pool.ready
    st.metrics.workers.set(ready)
    st.metrics.restarts.set(st.pool.restarts)
    body = {"status": "ok" if ready == st.pool.n else "degraded" if ready else "unavailable",
            "workers": st.pool.n, "ready": ready, "restarts": st.pool.restarts}
    return _json(body, 200 if ready else 503)


async def version(request: Request) -> Response:
    """Versions and what the model serves."""
    st: ServerState = request.app.state.server
    info = st.pool.info
    return _json({"ehrfm": __version__, "model_uri": st.model_uri, "model_version": st.model_version,
                  "model": info.model_name if info else None, "backbone": info.backbone if info else None,
                  "tasks": info.kinds if info else {}, "max_len": info.max_len if info else None,
                  "strict": info.strict if info else None})


async def metrics(request: Request) -> Response:
    """Prometheus exposition."""
    st: ServerState = request.app.state.server
    st.metrics.workers.set(st.pool.ready)
    st.metrics.restarts.set(st.pool.restarts)
    return Response(generate_latest(st.metrics.registry), 200, media_type=CONTENT_TYPE_LATEST)


def openapi(cfg: ServerConfig) -> dict[str, Any]:
    """A short OpenAPI 3.1 description of the routes (served only with ``--docs true``)."""
    def op(summary: str, media: str | None = None) -> dict[str, Any]:
        o: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK"}}}
        if media:
            o["requestBody"] = {"required": True, "content": {media: {"schema": {"type": "object"}}}}
        return o

    return {"openapi": "3.1.0", "info": {"title": "ehrfm serve", "version": __version__},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "paths": {"/ping": {"get": op("liveness")}, "/health": {"get": op("readiness")},
                      "/version": {"get": op("versions and tasks")}, "/metrics": {"get": op("Prometheus")},
                      "/invocations": {"post": op("MLflow scoring protocol", "application/json")},
                      "/fhir/$risk": {"post": op("Bundle in, RiskAssessment Bundle out", FHIR_JSON)},
                      "/fhir/RiskAssessment/{id}": {"get": op("a recent RiskAssessment")},
                      "/cds-services": {"get": op("CDS Hooks discovery")},
                      f"/cds-services/{cfg.cds.service_id}": {"post": op("CDS Hooks patient-view",
                                                                          "application/json")}}}


async def _not_found(request: Request, exc: Exception) -> Response:
    rid = request.scope.get("state", {}).get("request_id", "")
    code = getattr(exc, "status_code", 404)
    request.scope.get("state", {}).get("fields", {})["outcome"] = "not_found" if code == 404 else "bad_method"
    return _reply(error_reply(dialect(request.url.path), code,
                              "no such endpoint" if code == 404 else "method not allowed", rid), rid)


def build_app(state: ServerState) -> Guard:
    """The ASGI application (the pool is started and stopped by its lifespan)."""
    routes = [Route("/ping", ping), Route("/health", health), Route("/version", version),
              Route("/metrics", metrics), Route("/invocations", invocations, methods=["POST"]),
              Route("/fhir/$risk", fhir_risk, methods=["POST"]),
              Route("/fhir/RiskAssessment/{id}", fhir_read),
              Route("/cds-services", cds_discovery),
              Route("/cds-services/{service}", cds_call, methods=["POST"])]
    if state.cfg.docs:
        spec = openapi(state.cfg)

        async def openapi_json(request: Request) -> Response:
            return _json(spec)

        async def docs(request: Request) -> Response:
            rows = "".join(f"<li><code>{m.upper()} {p}</code>: {o['summary']}</li>"
                           for p, ops in spec["paths"].items() for m, o in ops.items())
            return HTMLResponse(f"<html><body><h1>ehrfm serve</h1><ul>{rows}</ul>"
                                "<p><a href='/openapi.json'>openapi.json</a></p></body></html>")

        routes += [Route("/openapi.json", openapi_json), Route("/docs", docs)]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await state.pool.start()
        log.info("ready", extra={"fields": {"event": "ready", "workers": state.pool.n,
                                            "model_uri": state.model_uri, "pids": state.pool.pids()}})
        try:
            yield
        finally:
            await state.pool.close()

    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: _not_found, 405: _not_found})
    app.state.server = state
    return Guard(app, state)
