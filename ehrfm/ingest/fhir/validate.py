"""Structural validation of FHIR resources with ``fhir.resources`` (R4B models for R4, STU3 models for
STU3), and the check whether a ``resourceType`` exists at all.

Two engines, one answer. :func:`validate_resource_reference` builds the full models (the reference
twin). :func:`validate_resource` first walks the resource with :mod:`ehrfm.ingest.fhir.fastvalidate`
(tables compiled from the same models, ~20x cheaper) and asks the full models only when that walk cannot
prove the resource valid, so every rejection, field and reason is the reference's own. The engine is
``fast`` unless ``$EHRFM_FHIR_VALIDATOR=reference`` or :func:`validator_engine` says otherwise (benchmarks
compare the two in one process).

``fhir.resources`` 8.x validates R5 by default; R4 data validates with ``fhir.resources.R4B``. An unknown
type raises ``ValueError`` from ``get_fhir_model_class`` (and a bare ``KeyError`` inside a Bundle model),
so both are caught here and turned into a reason. Value-set bindings are not enforced by the library.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from ehrfm.ingest.fhir import fastvalidate
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


ENGINES = ("fast", "reference")
ENGINE_ENV = "EHRFM_FHIR_VALIDATOR"
_engine: list[str] = []  # the innermost validator_engine() override, if any


def current_engine() -> str:
    """The validation engine in use: a :func:`validator_engine` override, else ``$EHRFM_FHIR_VALIDATOR``,
    else ``fast``; ``ValueError`` naming the variable for anything else."""
    name = _engine[-1] if _engine else os.environ.get(ENGINE_ENV, "fast").strip().lower() or "fast"
    if name not in ENGINES:
        raise ValueError(f"${ENGINE_ENV}: expected one of {ENGINES}")
    return name


@contextmanager
def validator_engine(name: str) -> Iterator[None]:
    """Use validation engine ``name`` (``fast`` or ``reference``) inside the ``with`` block."""
    if name not in ENGINES:
        raise ValueError(f"validator engine: expected one of {ENGINES}, got {name!r}")
    _engine.append(name)
    try:
        yield
    finally:
        _engine.pop()


def validate_resource(resource: dict[str, Any], rules: Rules) -> tuple[str | None, str] | None:
    """``None`` when valid, else ``(field, reason)`` for the first problem the FHIR models report.

    The same answer as :func:`validate_resource_reference`; with the ``fast`` engine the full models run
    only for resources the structural walk cannot prove valid (see the module docstring)."""
    if current_engine() == "fast":
        try:
            model = _model(fhir_version(resource, rules), str(resource.get("resourceType")))
        except (KeyError, ValueError):
            model = None  # unknown type: the reference words the reason
        if model is not None and fastvalidate.check(model, resource):
            return None
    return validate_resource_reference(resource, rules)


def validate_resource_reference(resource: dict[str, Any],
                                rules: Rules) -> tuple[str | None, str] | None:
    """The reference twin: validate with the full ``fhir.resources`` models. ``None`` when valid, else
    ``(field, reason)`` for the first problem they report."""
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
