"""Explanations in FHIR R4: contributing events as ``RiskAssessment.basis`` references, or as extensions.

An explained event that came from a Bundle resource with a logical id becomes a ``basis`` Reference
(``Observation/<id>``) whose ``display`` describes the event and whose :data:`EXT_ATTRIBUTION` extension
carries the attribution. An event without such a resource (MEDS input, a static code, a resource without
an id) becomes a :data:`EXT_EVENT` extension on the RiskAssessment (code, time, value, unit, attribution).
What was explained and how well the completeness check held is the :data:`EXT_EXPLANATION` extension.
The URLs are logical names (documented in ``docs/explain.md``), not resolvable StructureDefinitions.

Which resource an event came from: the ingest keeps no per-event resource id, so the candidates of the
event's type (``source`` = ``fhir:<type>``) are mapped again, one at a time, by the same mapper
(:func:`ehrfm.ingest.fhir.mapper.map_resource`) until one yields an event with the same code, time and
value. Only the few listed events are looked up, each candidate is mapped at most once per request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ehrfm.ingest.fhir.mapper import MapContext, map_resource
from ehrfm.ingest.fhir.rules import load_rules
from ehrfm.schema import CODE, NUMERIC_VALUE, SOURCE, TIME
from ehrfm.tokenize.timeline import to_us

EXT_ATTRIBUTION = "urn:ehrfm:fhir:extension:attribution"
"""valueDecimal on a ``basis`` Reference: the event's attribution (integrated gradients, logit units)."""
EXT_EVENT = "urn:ehrfm:fhir:extension:contributing-event"
"""Complex extension on the RiskAssessment for an event without a resource: sub-extensions ``code``
(valueString), ``time`` (valueDateTime), ``value`` (valueDecimal), ``unit`` (valueString) and
``attribution`` (valueDecimal)."""
EXT_EXPLANATION = "urn:ehrfm:fhir:extension:explanation"
"""Complex extension on the RiskAssessment: ``target`` (valueString: logit or risk_logit, the raw head
output before calibration), ``baseline`` (valueString), ``relativeError`` (valueDecimal: the completeness
error) and ``steps`` (valueInteger)."""
_MAX_TIME_US = 2**62  # the request was checked already: no far-future rejection while re-mapping


class ResourceFinder:
    """Finds the Bundle resource (``Type/id``) an event row came from; caches mapped candidates."""

    def __init__(self, entries: Sequence[Any]) -> None:
        self.resources = [e["resource"] for e in entries
                          if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
        meds = {f"Medication/{r['id']}": r for r in self.resources
                if r.get("resourceType") == "Medication" and isinstance(r.get("id"), str)}
        self.ctx = MapContext(rules=load_rules(), medications=meds, max_time_us=_MAX_TIME_US)
        self._mapped: dict[int, list[tuple[int | None, str, float]]] = {}

    def _events(self, k: int) -> list[tuple[int | None, str, float]]:
        if k not in self._mapped:
            events, _ = map_resource(self.resources[k], self.ctx)
            self._mapped[k] = [(e["time"], str(e["code"]), _num(e.get(NUMERIC_VALUE))) for e in events]
        return self._mapped[k]

    def find(self, event: pd.Series) -> str | None:
        """``Type/id`` of the resource that maps to ``event`` (a row of the events frame), else None."""
        source = event.get(SOURCE)
        if not isinstance(source, str) or not source.startswith("fhir:"):
            return None
        rtype = source[len("fhir:"):]
        t = event.get(TIME)
        t_us = None if t is None or pd.isna(t) else int(to_us(pd.Series([t]))[0][0])
        want = (t_us, str(event[CODE]), _num(event.get(NUMERIC_VALUE)))
        for k, res in enumerate(self.resources):
            if res.get("resourceType") != rtype or not isinstance(res.get("id"), str) or not res["id"]:
                continue
            if any(_same(want, got) for got in self._events(k)):
                return f"{rtype}/{res['id']}"
        return None


def _num(v: Any) -> float:
    return math.nan if v is None or pd.isna(v) else float(np.float32(v))  # events store float32


def _same(a: tuple[int | None, str, float], b: tuple[int | None, str, float]) -> bool:
    return a[0] == b[0] and a[1] == b[1] and (a[2] == b[2] or (math.isnan(a[2]) and math.isnan(b[2])))


def _decimal(v: float) -> float:
    return round(float(v), 6)


def basis_and_extensions(summary: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(``basis`` References, RiskAssessment extensions) of an explanation summary
    (:meth:`~ehrfm.explain.explainer.RowExplanation.summary` whose events may carry ``resource``)."""
    basis: list[dict[str, Any]] = []
    extensions: list[dict[str, Any]] = [{"url": EXT_EXPLANATION, "extension": [
        {"url": "target", "valueString": str(summary["target"])},
        {"url": "baseline", "valueString": str(summary.get("baseline", "pad"))},
        {"url": "relativeError", "valueDecimal": _decimal(summary["rel_error"])},
        {"url": "steps", "valueInteger": int(summary["steps"])}]}]
    for ev in summary["events"]:
        if ev.get("resource"):
            weight = {"url": EXT_ATTRIBUTION, "valueDecimal": _decimal(ev["attribution"])}
            basis.append({"reference": ev["resource"], "display": str(ev.get("text") or ev["code"]),
                          "extension": [weight]})
            continue
        parts: list[dict[str, Any]] = [{"url": "code", "valueString": str(ev["code"])}]
        if ev.get("time"):
            parts.append({"url": "time", "valueDateTime": _fhir_time(ev["time"])})
        if ev.get("value") is not None:
            parts.append({"url": "value", "valueDecimal": _decimal(ev["value"])})
        if ev.get("unit"):
            parts.append({"url": "unit", "valueString": str(ev["unit"])})
        parts.append({"url": "attribution", "valueDecimal": _decimal(ev["attribution"])})
        extensions.append({"url": EXT_EVENT, "extension": parts})
    return basis, extensions


def _fhir_time(iso: str) -> str:
    """A naive-UTC ISO time as a FHIR dateTime with its offset."""
    return pd.Timestamp(iso).strftime("%Y-%m-%dT%H:%M:%S+00:00")
