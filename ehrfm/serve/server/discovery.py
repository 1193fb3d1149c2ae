"""The CDS Hooks discovery document of the ``patient-view`` service (light: the front process serves it)."""

from __future__ import annotations

from typing import Any

from ehrfm.config.server import CdsConfig

HOOK = "patient-view"
# prefetch key -> (resource type, query template); the discovery document advertises exactly these
PREFETCH = {"patient": ("Patient", "Patient/{{context.patientId}}"),
            "encounters": ("Encounter", "Encounter?patient={{context.patientId}}"),
            "conditions": ("Condition", "Condition?patient={{context.patientId}}"),
            "observations": ("Observation", "Observation?patient={{context.patientId}}"),
            "medications": ("MedicationRequest", "MedicationRequest?patient={{context.patientId}}")}


def discovery(cfg: CdsConfig, model: str, tasks: list[str]) -> dict[str, Any]:
    """The ``GET /cds-services`` document."""
    return {"services": [{
        "hook": HOOK, "id": cfg.service_id, "title": f"ehrfm risk ({model})",
        "description": f"Risk predictions from the ehrfm model {model} for the patient in view: "
                       f"{', '.join(tasks)}. Each card carries the risk, its horizon, the model version "
                       "and a link to the FHIR RiskAssessment.",
        "prefetch": {k: q for k, (_, q) in PREFETCH.items()},
        "usageRequirements": "Send prefetch, or list this service's FHIR server access in fhirServer / "
                             "fhirAuthorization (the server must be allowed by the deployment)."}]}
