"""The CDS Hooks 2.0 ``patient-view`` service: discovery, the patient's record from ``prefetch`` (or the
FHIR server named in the request), risks as cards.

Spec: https://cds-hooks.hl7.org/2.0/. The record is assembled into one FHIR ``collection`` Bundle and scored
by the same :func:`~ehrfm.serve.pyfunc.predict_frame` as ``/invocations`` and ``/fhir/$risk``, at the time
of the call (``patient-view`` asks "what is this patient's risk now").

A FHIR server is queried only when prefetch is incomplete, only if its URL starts with one of
``cds.allowed_fhir_servers`` (else 412: a request must not be able to point the service at arbitrary
URLs), with the request's ``fhirAuthorization`` bearer token, bounded by the server's byte and resource
limits, following ``next`` links only under the same server.
"""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
import uuid
from typing import TYPE_CHECKING, Any, cast

import orjson
import pandas as pd

from ehrfm.config.server import CdsConfig
from ehrfm.serve.fhir_io import InputError
from ehrfm.serve.server.discovery import HOOK, PREFETCH
from ehrfm.serve.server.errors import JSON
from ehrfm.serve.server.protocol import Job, Reply

if TYPE_CHECKING:
    from ehrfm.serve.server.worker import Handler

def _str(obj: dict[str, Any], key: str, where: str, required: bool = True) -> str | None:
    v = obj.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v.strip():
        raise InputError(f"field '{where}{key}' must be a non-empty string", 400)
    return v


def _resources(value: Any, rtype: str, key: str) -> list[dict[str, Any]]:
    """A prefetch value (a resource, or a searchset Bundle) -> its resources of ``rtype``."""
    if not isinstance(value, dict):
        raise InputError(f"field 'prefetch.{key}' must be a FHIR resource or Bundle", 400)
    if value.get("resourceType") == rtype:
        return [value]
    if value.get("resourceType") != "Bundle":
        raise InputError(f"field 'prefetch.{key}' must be a {rtype} or a Bundle of them", 422)
    out = []
    for i, e in enumerate(value.get("entry") or []):
        res = e.get("resource") if isinstance(e, dict) else None
        if not isinstance(res, dict):
            raise InputError(f"field 'prefetch.{key}.entry[{i}].resource' must be a FHIR resource", 422)
        if res.get("resourceType") == "OperationOutcome":  # search.mode "outcome": not patient data
            continue
        out.append(res)
    return out


class Fetcher:
    """Bounded, allow-listed reads from the FHIR server named in a hook request."""

    def __init__(self, base: str, token: str | None, cfg: CdsConfig, max_bytes: int,
                 max_resources: int) -> None:
        """``base``: the request's fhirServer (already checked against the allow list)."""
        self.base, self.token, self.cfg = base.rstrip("/") + "/", token, cfg
        self.bytes_left, self.resources_left, self.calls = max_bytes, max_resources, 0

    def get(self, url: str) -> Any:
        """GET one URL under the base -> parsed JSON; errors are 502/504-free InputErrors (424-like 422)."""
        if not url.startswith(self.base):
            raise InputError("fhirServer: a link points outside the FHIR server; not followed", 422)
        req = urllib.request.Request(url, headers={"Accept": "application/fhir+json"})
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        self.calls += 1
        try:
            with urllib.request.urlopen(req, timeout=self.cfg.fetch_timeout_s) as resp:  # noqa: S310
                data = resp.read(self.bytes_left + 1)
        except urllib.error.HTTPError as e:
            raise InputError(f"fhirServer answered HTTP {e.code} for a {url.rsplit('/', 1)[-1].split('?')[0]}"
                             " query", 422) from None
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            raise InputError(f"fhirServer could not be read ({type(e).__name__})", 422) from None
        self.bytes_left -= len(data)
        if self.bytes_left < 0:
            raise InputError("fhirServer: the patient's record is over the limit max_body_bytes", 413)
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            raise InputError("fhirServer answered with invalid JSON", 422) from None

    def query(self, key: str, patient_id: str) -> list[dict[str, Any]]:
        """The resources of prefetch ``key`` for the patient (following ``next`` links)."""
        rtype, template = PREFETCH[key]
        url: str | None = self.base + template.replace("{{context.patientId}}",
                                                       urllib.parse.quote(patient_id, safe=""))
        out: list[dict[str, Any]] = []
        while url:
            page = self.get(url)
            found = _resources(page, rtype, key)
            out.extend(found)
            self.resources_left -= len(found)
            if self.resources_left < 0:
                raise InputError("fhirServer: the patient's record is over the limit max_resources", 413)
            bundle = isinstance(page, dict) and page.get("resourceType") == "Bundle"
            links = page.get("link") if bundle else []
            url = next((lk.get("url") for lk in links or [] if isinstance(lk, dict)
                        and lk.get("relation") == "next" and isinstance(lk.get("url"), str)), None)
        return out


def hook_record(req: Any, cfg: CdsConfig, max_bytes: int, max_resources: int) -> tuple[str, dict[str, Any],
                                                                                        dict[str, Any]]:
    """A ``patient-view`` request -> (patientId, collection Bundle of the record, loggable facts)."""
    if not isinstance(req, dict):
        raise InputError("the hook request must be a JSON object", 400)
    if req.get("hook") != HOOK:
        raise InputError(f"field 'hook' must be {HOOK!r} (the only hook this service answers)", 400)
    _str(req, "hookInstance", "")
    ctx = req.get("context")
    if not isinstance(ctx, dict):
        raise InputError("field 'context' must be an object", 400)
    patient_id = str(_str(ctx, "patientId", "context."))
    prefetch = req.get("prefetch") or {}
    if not isinstance(prefetch, dict):
        raise InputError("field 'prefetch' must be an object", 400)
    have = {k: _resources(prefetch[k], PREFETCH[k][0], k) for k in PREFETCH if prefetch.get(k) is not None}
    missing = [k for k in PREFETCH if k not in have]
    fetched = 0
    if missing:
        server = req.get("fhirServer")
        if not isinstance(server, str) or not server:
            raise InputError(f"prefetch is missing {missing} and the request names no fhirServer", 412)
        if not any(server.startswith(p) for p in cfg.allowed_fhir_servers):
            raise InputError(f"prefetch is missing {missing} and the request's fhirServer is not among this "
                             "service's allowed FHIR servers", 412)
        auth = req.get("fhirAuthorization")
        token = auth.get("access_token") if isinstance(auth, dict) else None
        fetcher = Fetcher(server, token if isinstance(token, str) else None, cfg, max_bytes, max_resources)
        for k in missing:
            have[k] = fetcher.query(k, patient_id)
        fetched = fetcher.calls
    patients = have["patient"]
    if len(patients) != 1 or patients[0].get("id") != patient_id:
        raise InputError("prefetch.patient must be the Patient named by context.patientId", 422)
    entries = [{"resource": r} for k in PREFETCH for r in have[k]]
    facts = {"prefetched": len(PREFETCH) - len(missing), "fhir_calls": fetched, "resources": len(entries)}
    return patient_id, {"resourceType": "Bundle", "type": "collection", "entry": entries}, facts


def _indicator(risk: float, cfg: CdsConfig) -> str:
    return "critical" if risk >= cfg.critical_at else "warning" if risk >= cfg.warning_at else "info"


def _risk_and_horizon(ra: dict[str, Any]) -> tuple[float, str]:
    """The headline risk of a RiskAssessment: a binary task's probability, or a time-to-event task's
    probability at its longest horizon."""
    preds = ra.get("prediction") or []
    last = preds[-1]
    high = (last.get("whenRange") or {}).get("high")
    horizon = f"within {high['value']:g} days" if high else ""
    return float(last["probabilityDecimal"]), horizon


def cards(records: list[dict[str, Any]], resources: dict[str, bytes], h: Handler, base_url: str,
          partial: bool) -> list[dict[str, Any]]:
    """One card per binary / time-to-event task: risk, horizon, model and version, a link to the stored
    RiskAssessment and a suggestion to save it in the record."""
    info = h.info()
    version = info.model_version or "unversioned"
    by_task = {orjson.loads(v)["code"]["text"]: (k, orjson.loads(v)) for k, v in resources.items()}
    out = []
    for rec in records:
        if rec["kind"] == "forecast":
            continue
        ra_id, ra = by_task[rec["task"]]
        risk, horizon = _risk_and_horizon(ra)
        desc = h.scorer.descriptions.get(rec["task"], rec["task"])
        summary = f"{rec['task']}: {100 * risk:.0f}% risk{(' ' + horizon) if horizon else ''}"
        detail = (f"**{desc}**\n\nPredicted risk **{100 * risk:.1f}%**{(' ' + horizon) if horizon else ''}, "
                  f"as of {ra['occurrenceDateTime']}.\n\nModel: {info.model_name} ({info.backbone}), "
                  f"version {version}.")
        if partial:
            detail += ("\n\nSome resources of the record could not be used and were left out "
                       "(see the OperationOutcome of `POST /fhir/$risk`).")
        out.append({"uuid": str(uuid.uuid4()), "summary": summary[:139],  # the spec: "<140 characters"
                    "indicator": _indicator(risk, h.cds),
                    "detail": detail,
                    "source": {"label": f"ehrfm {info.model_name} v{version}"},
                    "links": [{"label": "RiskAssessment (FHIR)", "type": "absolute",
                               "url": f"{base_url.rstrip('/')}/fhir/RiskAssessment/{ra_id}"}],
                    "selectionBehavior": "any",  # required by the spec whenever suggestions are given
                    "suggestions": [{"label": "Save this risk assessment to the record",
                                     "uuid": str(uuid.uuid4()),
                                     "actions": [{"type": "create",
                                                  "description": f"Add the {rec['task']} RiskAssessment",
                                                  "resource": ra}]}]})
    return out


def answer(h: Handler, job: Job) -> Reply:
    """``POST /cds-services/<id>``: the hook request in, ``{"cards": [...]}`` out."""
    req = h.loads(job.body)
    patient_id, bundle, facts = hook_record(req, h.cds, h.limits.max_body_bytes, h.limits.max_resources)
    now = pd.Timestamp.now(tz="UTC").floor("s")
    tasks = h.cds.tasks or [t for t, k in h.info().kinds.items() if k != "forecast"]
    row = {"bundle": orjson.dumps(bundle), "prediction_time": now.isoformat(), "tasks": ",".join(tasks)}
    out = h.predict(pd.DataFrame([row]), None)
    _, resources, partial = h.result_bundle(out)
    records = cast(list[dict[str, Any]], out.to_dict("records"))
    body = {"cards": cards(records, resources, h, job.base_url, partial)}
    meta = {"outcome": "ok", "rows": 1, "predictions": len(out), "partial_rows": int(partial), **facts}
    return Reply(200, JSON, orjson.dumps(body), meta, resources)
