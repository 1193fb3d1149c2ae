"""Structural validation of FHIR resources with ``fhir.resources`` (the models of each resource's own FHIR
version: STU3, R4B for R4 and R4B, R5; :mod:`~ehrfm.ingest.fhir.versions` decides which), and the check
whether a ``resourceType`` exists at all.

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

from ehrfm.ingest.fhir import fastvalidate, versions
from ehrfm.ingest.fhir.rules import Rules


def _model(version: str, resource_type: str) -> Any:
    """The model class validating ``resource_type`` in ``version`` (:mod:`~ehrfm.ingest.fhir.versions`)."""
    return versions.model_class(version, resource_type)


@lru_cache(maxsize=1024)
def is_known_type(resource_type: str) -> bool:
    """True when ``resource_type`` is a FHIR resource type in R4B, STU3 or R5."""
    if not resource_type.isidentifier() or not resource_type[:1].isupper():
        return False
    for version in ("R4B", "STU3", "R5"):
        try:
            _model(version, resource_type)
            return True
        except (KeyError, ValueError, ImportError, AttributeError):
            continue
    return False


def fhir_version(resource: dict[str, Any], rules: Rules, version: str = versions.AUTO,
                 prefer: str | None = None) -> str:
    """The FHIR version ``resource`` is validated in: ``version`` when explicit, else detected from its
    shape, profile and ``prefer`` (its source's version) by :func:`ehrfm.ingest.fhir.versions.detect`."""
    return versions.detect(resource, rules, version, prefer)


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


def validate_resource(resource: dict[str, Any], rules: Rules, version: str = versions.AUTO,
                      prefer: str | None = None) -> tuple[str | None, str] | None:
    """``None`` when valid, else ``(field, reason)`` for the first problem the FHIR models report.

    ``version``: the FHIR version (``auto``: detected per resource, ``prefer`` breaking ties; see
    :mod:`~ehrfm.ingest.fhir.versions`). The same answer as :func:`validate_resource_reference`; with the
    ``fast`` engine the full models run only for resources the structural walk cannot prove valid (see the
    module docstring)."""
    if current_engine() != "fast":
        return validate_resource_reference(resource, rules, version, prefer)
    # Proved valid for the first candidate version means detect() picks that version too (a resource the
    # walk proves valid fits the model's shape exactly), so the costlier shape comparison is skipped.
    first = versions.candidates(resource, rules, version, prefer)[0]
    if _fast_valid(first, resource):
        return None
    detected = fhir_version(resource, rules, version, prefer)
    if detected != first and _fast_valid(detected, resource):
        return None
    return validate_resource_reference(resource, rules, detected)


def _fast_valid(version: str, resource: dict[str, Any]) -> bool:
    """The fast walk proves ``resource`` valid for the ``version`` models (False for an unknown type: the
    reference words the reason)."""
    try:
        model = _model(version, str(resource.get("resourceType")))
    except (KeyError, ValueError):
        return False
    return fastvalidate.check(model, resource) is fastvalidate.VALID


def validate_resource_reference(resource: dict[str, Any], rules: Rules, version: str = versions.AUTO,
                                prefer: str | None = None) -> tuple[str | None, str] | None:
    """The reference twin: validate with the full ``fhir.resources`` models of the resource's FHIR version
    (``version``, ``prefer``: as :func:`validate_resource`). ``None`` when valid, else ``(field, reason)`` for
    the first problem they report; the reason names the model package (``R4B`` for R4 and R4B)."""
    rtype = resource.get("resourceType")
    detected = fhir_version(resource, rules, version, prefer)
    version = versions.PACKAGE[detected]
    try:
        model = _model(detected, str(rtype))
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
