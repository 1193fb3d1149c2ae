"""Which FHIR version (STU3, R4, R4B, R5) a resource is written in, and which ``fhir.resources`` models
validate it.

Exports of one system mix versions rarely, but a corpus often does (an older STU3 Synthea export next to
an R4 one), and nothing in a resource states its version for sure. So the version is decided per resource,
in this order (docs/CONVENTIONS.md, "FHIR versions"):

1. **An explicit version** (the ``fhir_version`` setting, when not ``auto``): used as is, no detection.
2. **The shape of the resource**, walked against the STU3, R4B and R5 models of its type
   (:func:`ehrfm.ingest.fhir.fastvalidate.mismatches`): keys a version does not have (STU3
   ``Immunization.date``/``notGiven``, ``Observation.context``; R5 ``Encounter.actualPeriod``), objects
   where a version has a primitive (STU3 ``Condition.clinicalStatus`` is a code, R4 a CodeableConcept),
   lists where it has one value (R5 ``Encounter.class``), down to nested elements (STU3
   ``MedicationRequest.requester.agent``, ``Dosage.doseQuantity``). The version with the fewest misfits
   wins. The differences are read from the models themselves, so no hand-kept list can miss one.
3. **Hints**, for ties (a resource that fits several versions, e.g. most Patients): the resource's
   ``meta.profile`` (``/STU3/``, ``|3.0.x`` of a core profile, ``/R4/``, ``|4.0.x``, ``/R4B/``, ``|4.3.x``,
   ``/R5/``, ``|5.0.x``, the rules' ``stu3_profile_markers``), the rules' ``stu3_fields``, then the version
   of the source the resource came from (:func:`source_version`, e.g. the Bundle's ``meta.profile`` or the
   versions of its other resources), then R4, STU3, R5 in this order (R4 is by far the most common).

R4 and R4B differ only in resources ehrfm does not map (and a few added elements), and ``fhir.resources``
ships R4B models only, so both validate with ``fhir.resources.R4B``; shape alone cannot tell them apart, so
a resource is called R4B only when its profile or source says so. R5 validates with the package's default
models, STU3 with ``fhir.resources.STU3``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from ehrfm.ingest.fhir import fastvalidate
from ehrfm.ingest.fhir.rules import Rules, get_path

VERSIONS = ("STU3", "R4", "R4B", "R5")
AUTO = "auto"
CHOICES = (AUTO, *VERSIONS)
# the fhir.resources package whose models validate each version (also the word used in reject reasons)
PACKAGE = {"STU3": "STU3", "R4": "R4B", "R4B": "R4B", "R5": "R5"}
_FAMILIES = ("R4", "STU3", "R5")  # one per model package, in tie-break order

# meta.profile -> version: a version segment in the URL (…/STU3/…, …/R4/…), or the FHIR version of a core
# profile (http://hl7.org/fhir/StructureDefinition/x|3.0.2). The version of an IG profile (US Core 3.1.1 is
# R4) says nothing about FHIR, so only core profiles count by their |version.
_SEGMENT = re.compile(r"/(stu3|r4b|r4|r5)(?:/|$)", re.IGNORECASE)
_CORE = re.compile(r"^https?://hl7\.org/fhir/StructureDefinition/[^|]+\|(\d+)\.(\d+)")
_CORE_VERSIONS = {("3", "0"): "STU3", ("4", "0"): "R4", ("4", "3"): "R4B", ("5", "0"): "R5"}


def check_version(value: str, name: str = "fhir_version") -> str:
    """``value`` when it is ``auto`` or a version name (case-insensitive, returned canonical); else
    ``ValueError`` naming the setting."""
    canon = {c.lower(): c for c in CHOICES}.get(str(value).strip().lower())
    if canon is None:
        raise ValueError(f"{name}: expected one of {CHOICES}")
    return canon


@lru_cache(maxsize=2048)
def model_class(version: str, resource_type: str) -> Any:
    """The ``fhir.resources`` model class of ``resource_type`` for ``version`` (a name of :data:`VERSIONS`,
    or a package name ``R4B``/``STU3``/``R5``); ``KeyError``/``ValueError`` for a type the version lacks."""
    package = PACKAGE[version]
    if package == "STU3":
        from fhir.resources.STU3 import get_fhir_model_class as stu3
        return stu3(resource_type)
    if package == "R4B":
        from fhir.resources.R4B import get_fhir_model_class as r4b
        return r4b(resource_type)
    from fhir.resources import get_fhir_model_class as r5
    return r5(resource_type)


def _model_or_none(version: str, resource_type: str) -> Any:
    if not resource_type.isidentifier():
        return None
    try:
        return model_class(version, resource_type)
    except (KeyError, ValueError, ImportError, AttributeError):
        return None


def profile_version(resource: dict[str, Any], rules: Rules | None = None) -> str | None:
    """The version the resource's ``meta.profile`` names (see the module docstring), else ``None``."""
    meta = resource.get("meta")
    profiles = meta.get("profile") if isinstance(meta, dict) else None
    if not isinstance(profiles, list):
        return None
    markers = rules.stu3_profile_markers if rules is not None else ()
    for p in profiles:
        if not isinstance(p, str):
            continue
        seg = _SEGMENT.search(p)
        if seg:
            return seg.group(1).upper()
        core = _CORE.match(p)
        if core and (core.group(1), core.group(2)) in _CORE_VERSIONS:
            return _CORE_VERSIONS[(core.group(1), core.group(2))]
        low = p.lower()
        if any(m in low for m in markers):
            return "STU3"
    return None


def candidates(resource: dict[str, Any], rules: Rules | None = None, version: str = AUTO,
               prefer: str | None = None) -> tuple[str, ...]:
    """The versions :func:`detect` tries, in order: ``(version,)`` when explicit; else the profile's
    version, STU3 when a rules ``stu3_fields`` path is present, ``prefer``, then R4, STU3, R5 (one name per
    model package, the first named winning: a profile naming R4B puts R4B, not R4)."""
    if version != AUTO:
        return (version,)
    order: list[str] = []
    named = profile_version(resource, rules) if "meta" in resource else None
    if named:
        order.append(named)
    if rules is not None:
        for path in rules.stu3_fields.get(str(resource.get("resourceType")), ()):
            if get_path(resource, path) is not None:
                order.append("STU3")
                break
    if prefer and prefer != AUTO:
        order.append(prefer)
    if not order:
        return _FAMILIES  # the common case: nothing names a version
    packages = set()
    out = []
    for v in (*order, *_FAMILIES):
        if PACKAGE[v] not in packages:
            packages.add(PACKAGE[v])
            out.append(v)
    return tuple(out)


def detect(resource: dict[str, Any], rules: Rules | None = None, version: str = AUTO,
           prefer: str | None = None) -> str:
    """The FHIR version of ``resource`` (one of :data:`VERSIONS`), by the rules of the module docstring.

    ``version``: an explicit version (not ``auto``) is returned as is. ``prefer``: the version of the
    resource's source, used for ties only. A resource of a type no version has is called by the hints
    alone (the validator then rejects the unknown type)."""
    order = candidates(resource, rules, version, prefer)
    if len(order) == 1:
        return order[0]
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str):
        return order[0]
    best, best_n = None, 1 << 30
    for v in order:
        model = _model_or_none(v, rtype)
        if model is None:
            continue
        n = fastvalidate.mismatches(model, resource, best_n)
        if n == 0:
            return v  # fits this version exactly: nothing later in the order can fit better
        if n < best_n:
            best, best_n = v, n
    return best or order[0]


def source_version(resources: Iterable[Any], rules: Rules | None = None, bundle: Any = None) -> str | None:
    """The version of one source (a Bundle's entries, an NDJSON file's lines), for :func:`detect`'s
    ``prefer``: the version the Bundle's own ``meta.profile`` names, else the version most of the resources
    are detected in when that is not a tie (resources that fit several versions do not vote), else
    ``None``."""
    if isinstance(bundle, dict):
        named = profile_version(bundle, rules)
        if named:
            return named
    votes: Counter[str] = Counter()
    for res in resources:
        if not isinstance(res, dict) or not isinstance(res.get("resourceType"), str):
            continue
        fits = [v for v in _FAMILIES if (m := _model_or_none(v, res["resourceType"])) is not None
                and fastvalidate.mismatches(m, res, 0) == 0]
        if len(fits) == 1:
            votes[fits[0]] += 1
        elif not fits:
            votes[detect(res, rules)] += 1
    top = votes.most_common(2)
    if not top or (len(top) == 2 and top[0][1] == top[1][1]):
        return None
    return top[0][0]
