"""FHIR OperationOutcome for an error: a light module (standard library only), so the server's front process
can answer FHIR errors without loading the scoring stack."""

from __future__ import annotations

from typing import Any


def error_outcome(message: str, code: str = "invalid") -> dict[str, Any]:
    """A FHIR R4 OperationOutcome (dict) with one error issue (``code`` from the FHIR IssueType codes:
    invalid, structure, too-costly, processing, not-supported, security, exception, timeout, ...)."""
    return {"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": code, "diagnostics": message}]}
