"""Error answers in each endpoint's own dialect, built by the front and by the workers alike.

- ``/invocations`` (and everything that is not FHIR): MLflow's ``{"error_code": ..., "message": ...}``, so
  MLflow clients read our errors as they read ``mlflow models serve``'s;
- ``/fhir/...``: a FHIR ``OperationOutcome``;
- ``/cds-services/...``: ``{"error": ..., "message": ...}`` (the CDS Hooks spec leaves the body open).

Messages are ours: they name rows, fields and limits, never request content, never a stack trace or path.
"""

from __future__ import annotations

import orjson

from ehrfm.serve.outcome import error_outcome
from ehrfm.serve.server.protocol import Reply

MLFLOW_CODES = {400: "BAD_REQUEST", 401: "UNAUTHENTICATED", 404: "ENDPOINT_NOT_FOUND",
                405: "BAD_REQUEST", 408: "REQUEST_TIMEOUT", 412: "BAD_REQUEST", 413: "REQUEST_LIMIT_EXCEEDED",
                415: "BAD_REQUEST", 422: "INVALID_PARAMETER_VALUE", 429: "REQUEST_LIMIT_EXCEEDED",
                500: "INTERNAL_ERROR", 503: "TEMPORARILY_UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
# FHIR IssueType codes (http://hl7.org/fhir/issue-type)
FHIR_CODES = {400: "structure", 401: "login", 404: "not-found", 408: "timeout", 413: "too-costly",
              415: "not-supported", 422: "invalid", 500: "exception", 503: "transient", 504: "timeout"}
JSON, FHIR_JSON = "application/json", "application/fhir+json"


def dialect(path: str) -> str:
    """``fhir`` | ``cds`` | ``mlflow`` for a request path."""
    if path.startswith("/fhir/"):
        return "fhir"
    return "cds" if path.startswith("/cds-services") else "mlflow"


def error_reply(kind: str, status: int, message: str, request_id: str = "",
                outcome: str = "") -> Reply:
    """A :class:`Reply` for an error in dialect ``kind`` (see :func:`dialect`); ``meta.outcome`` is
    ``outcome`` or the status' MLflow code in lower case."""
    meta = {"outcome": outcome or MLFLOW_CODES.get(status, "error").lower()}
    if kind == "fhir":
        body = error_outcome(message, FHIR_CODES.get(status, "processing"))
        if request_id:
            body["id"] = request_id
        return Reply(status, FHIR_JSON, orjson.dumps(body), meta)
    if kind == "cds":
        cds = {"error": MLFLOW_CODES.get(status, "ERROR"), "message": message, "request_id": request_id}
        return Reply(status, JSON, orjson.dumps(cds), meta)
    mlflow = {"error_code": MLFLOW_CODES.get(status, "ERROR"), "message": message, "request_id": request_id}
    return Reply(status, JSON, orjson.dumps(mlflow), meta)
