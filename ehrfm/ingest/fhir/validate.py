"""Structural validation of FHIR resources with ``fhir.resources`` (R4B models for R4, STU3 models for
STU3), and the check whether a ``resourceType`` exists at all.

``fhir.resources`` 8.x validates R5 by default; R4 data validates with ``fhir.resources.R4B``. An unknown
type raises ``ValueError`` from ``get_fhir_model_class`` (and a bare ``KeyError`` inside a Bundle model),
so both are caught here and turned into a reason. Value-set bindings are not enforced by the library.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ehrfm.ingest.fhir.rules import Rules, get_path


@lru_cache(maxsize=1024)
def _model(version: str, resource_type: str) -> Any:
    if version == "STU3":
        from fhir.resources.STU3 import get_fhir_model_class as stu3
        return stu3(resource_type)
    from fhir.resources.R4B import get_fhir_model_class as r4b
    return r4b(resource_type)


@lru_cache(maxsize=1024)
def is_known_type(resource_type: str) -> bool:
    """True when ``resource_type`` is a FHIR resource type in R4B, STU3 or R5."""
    if not resource_type.isidentifier() or not resource_type[:1].isupper():
        return False
    for version in ("R4B", "STU3"):
        try:
            _model(version, resource_type)
            return True
        except (KeyError, ValueError, ImportError, AttributeError):
            continue
    try:
        from fhir.resources import get_fhir_model_class as r5
        r5(resource_type)
        return True
    except (KeyError, ValueError, ImportError, AttributeError):
        return False


def fhir_version(resource: dict[str, Any], rules: Rules) -> str:
    """``"STU3"`` when meta.profile names STU3 or the resource has an STU3-only field for its type, else
    ``"R4B"``."""
    profiles = ((resource.get("meta") or {}).get("profile") or [] if isinstance(resource.get("meta"), dict)
                else [])
    for p in profiles:
        low = str(p).lower()
        if any(m in low for m in rules.stu3_profile_markers):
            return "STU3"
    for path in rules.stu3_fields.get(str(resource.get("resourceType")), ()):
        if get_path(resource, path) is not None:
            return "STU3"
    # STU3 Condition.clinicalStatus is a code string; R4 made it a CodeableConcept
    if resource.get("resourceType") == "Condition" and isinstance(resource.get("clinicalStatus"), str):
        return "STU3"
    return "R4B"


def validate_resource(resource: dict[str, Any], rules: Rules) -> tuple[str | None, str] | None:
    """``None`` when valid, else ``(field, reason)`` for the first problem the FHIR models report."""
    rtype = resource.get("resourceType")
    version = fhir_version(resource, rules)
    try:
        model = _model(version, str(rtype))
    except (KeyError, ValueError) as e:
        return "resourceType", f"unknown resourceType {rtype!r} ({version}): {e}"
    try:
        model.model_validate(resource)
    except KeyError as e:  # nested unknown resourceType (contained resources)
        return "contained", f"invalid {version} {rtype}: unknown resourceType {e}"
    except Exception as e:  # pydantic.ValidationError and the library's own errors
        errors = getattr(e, "errors", None)
        if callable(errors):
            try:
                first = errors()[0]
                loc = ".".join(str(x) for x in first.get("loc", ())) or None
                return loc, f"invalid {version} {rtype}: {first.get('msg', e)} ({len(errors())} error(s))"
            except Exception:
                pass
        return None, f"invalid {version} {rtype}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
    return None
