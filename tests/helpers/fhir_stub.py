"""A stub FHIR R4 server on 127.0.0.1 for tests: reads and patient searches over given Synthea bundles.

    with fhir_stub([load_bundle(p) for p in paths], require_token="t0k3n") as stub:
        GET {stub.url}/Patient/<id>            -> the Patient resource
        GET {stub.url}/Condition?patient=<id>  -> a ``searchset`` Bundle (also ``patient=Patient/<id>``)
        stub.requests                          -> [(method, path, query, headers), ...]

Resources are served exactly as the bundles hold them, so their references stay ``urn:uuid:<id>`` (Synthea's
transaction bundles); a client must resolve both that and ``Patient/<id>``. Unknown paths, resource types,
ids and patients answer 404 with an ``OperationOutcome``, a search without ``patient`` 400, any method
but GET 405, and with ``require_token`` a request without ``Authorization: Bearer <token>`` 401. Search
parameters other than ``patient`` are recorded and ignored (no paging: every match in one Bundle).
"""

from __future__ import annotations

import gzip
import json
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

Resource = dict[str, Any]
Request = tuple[str, str, dict[str, list[str]], dict[str, str]]

# the types the CDS Hooks service asks for; any other type held in the bundles is searchable too
SEARCH_TYPES = ("Encounter", "Condition", "Observation", "MedicationRequest", "Procedure", "Immunization",
                "AllergyIntolerance")
FHIR_JSON = "application/fhir+json"


def load_bundle(path: str | Path) -> Resource:
    """One Synthea bundle file (``.json.gz`` or ``.json``) as parsed JSON."""
    p = Path(path)
    if p.suffix == ".gz":
        with gzip.open(p) as fh:
            raw = fh.read()
    else:
        raw = p.read_bytes()
    parsed: Resource = json.loads(raw)
    return parsed


def patient_of(resource: Resource) -> str | None:
    """The Patient id a resource points at through ``subject`` or ``patient`` (``urn:uuid:<id>`` or
    ``Patient/<id>``), or ``None``."""
    for key in ("subject", "patient"):
        ref = resource.get(key)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
            return _strip_ref(ref["reference"])
    return None


def _strip_ref(ref: str) -> str:
    for prefix in ("urn:uuid:", "Patient/"):
        if ref.startswith(prefix):
            return ref[len(prefix):]
    return ref


def outcome(code: str, diagnostics: str) -> Resource:
    """A one-issue error ``OperationOutcome`` (FHIR issue-type ``code``)."""
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": diagnostics}]}


@dataclass
class _Index:
    """The bundles' resources by (type, id) and by (type, patient id)."""

    by_id: dict[tuple[str, str], Resource] = field(default_factory=dict)
    by_patient: dict[tuple[str, str], list[Resource]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def build(cls, bundles: list[Resource]) -> _Index:
        index = cls()
        for bundle in bundles:
            for entry in bundle.get("entry", []):
                res = entry.get("resource")
                if not isinstance(res, dict) or "resourceType" not in res or "id" not in res:
                    continue
                rtype, rid = res["resourceType"], res["id"]
                index.by_id[(rtype, rid)] = res
                pid = patient_of(res)
                if pid is not None:
                    index.by_patient[(rtype, pid)].append(res)
        return index

    @property
    def types(self) -> set[str]:
        return {t for t, _ in self.by_id} | set(SEARCH_TYPES)


@dataclass
class Stub:
    """A running stub: base ``url`` (no trailing slash), the ``requests`` it received (method, path, parsed
    query, headers with lower-case names) in arrival order, and the ``patient_ids`` it holds."""

    url: str
    requests: list[Request]
    patient_ids: list[str]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        pass  # quiet: tests read stub.requests, and paths carry patient ids

    def _send(self, status: int, body: Resource, extra: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", FHIR_JSON)
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, dict[str, list[str]]]:
        parts = urlsplit(self.path)
        path, query = unquote(parts.path), parse_qs(parts.query, keep_blank_values=True)
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.server.lock:
            self.server.log.append((self.command, path, query, headers))
        return path, query

    def _authorized(self) -> bool:
        token = self.server.token
        return token is None or self.headers.get("Authorization", "") == f"Bearer {token}"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        """Read (``/<Type>/<id>``) or patient search (``/<Type>?patient=<id>``)."""
        path, query = self._record()
        if not self._authorized():
            self._send(401, outcome("login", "missing or wrong bearer token"), {"WWW-Authenticate": "Bearer"})
            return
        status, body = self.server.answer(path, query)
        self._send(status, body)

    def _refuse(self) -> None:
        self._record()
        self._send(405, outcome("not-supported", f"method {self.command} is not supported by this stub"))

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, index: _Index, token: str | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.index, self.token = index, token
        self.log: list[Request] = []
        self.lock = threading.Lock()

    def answer(self, path: str, query: dict[str, list[str]]) -> tuple[int, Resource]:
        """Status and body for a GET of ``path`` with ``query``."""
        segments = [s for s in path.split("/") if s]
        if not segments or segments[0] not in self.index.types or len(segments) > 2:
            return 404, outcome("not-found", "unknown path or resource type")
        rtype = segments[0]
        if len(segments) == 2:
            res = self.index.by_id.get((rtype, segments[1]))
            if res is None:
                return 404, outcome("not-found", f"{rtype} id is not known")
            return 200, res
        values = query.get("patient")
        if not values or not values[0]:
            return 400, outcome("required", f"{rtype} search: this stub needs the patient parameter")
        pid = _strip_ref(values[0])
        if ("Patient", pid) not in self.index.by_id:
            return 404, outcome("not-found", "patient id is not known")
        matches = self.index.by_patient.get((rtype, pid), [])
        base = f"http://127.0.0.1:{self.server_address[1]}"
        return 200, {
            "resourceType": "Bundle", "id": str(uuid.uuid4()), "type": "searchset", "total": len(matches),
            "link": [{"relation": "self", "url": f"{base}/{rtype}?patient={pid}"}],
            "entry": [{"fullUrl": f"{base}/{rtype}/{r['id']}", "resource": r, "search": {"mode": "match"}}
                      for r in matches],
        }


@contextmanager
def fhir_stub(bundles: list[Resource], *, require_token: str | None = None) -> Iterator[Stub]:
    """Serve ``bundles`` (parsed Synthea bundles) on 127.0.0.1, a free port, in a daemon thread.

    The server is shut down and its socket closed when the context exits.
    """
    index = _Index.build(bundles)
    server = _Server(index, require_token)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                              name="fhir-stub")
    thread.start()
    try:
        yield Stub(f"http://127.0.0.1:{server.server_address[1]}", server.log,
                   sorted(pid for t, pid in index.by_id if t == "Patient"))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
