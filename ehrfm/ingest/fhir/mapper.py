"""The pure-Python FHIR -> MEDS mapper: one resource in, events and rejects out.

The same function runs inside Spark (population ETL) and in the serving process (one patient), so
the two paths cannot drift apart. Field locations, code prefixes and class tables come from the
rules table (``rules.yaml``); this module holds only the logic.

References are expected in ``Type/id`` form: bundle-local ``urn:uuid:`` references are rewritten by
:mod:`ehrfm.ingest.fhir.records` before mapping (an unresolved ``urn:uuid:x`` is read as id ``x``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ehrfm.ingest.fhir.encounters import encounter_class
from ehrfm.ingest.fhir.ids import subject_id_for
from ehrfm.ingest.fhir.rules import ResourceRule, Rules, first_path, load_rules
from ehrfm.ingest.fhir.times import US_PER_DAY, TimeParseError, now_us, parse_fhir_time
from ehrfm.schema import BIRTH_CODE, DEATH_CODE

Event = dict[str, Any]
Reject = dict[str, Any]


@dataclass
class MapContext:
    """What mapping one resource may look up beyond the resource itself.

    ``birth_floor_us``: subject_id -> earliest plausible event time (birth, minus one day when only a
    birth *date* is known, so a same-day event in a zone east of UTC is not called impossible).
    ``medications``: ``Medication/<id>`` -> Medication resource (for ``medicationReference``).
    ``max_time_us``: events later than this are impossible (default: now + 1 day).
    ``descriptions``: filled while mapping: code -> ``coding.display`` (first seen wins).
    ``fhir_version``: the version resources are validated in (``auto``: detected per resource;
    :mod:`ehrfm.ingest.fhir.versions`).
    """

    rules: Rules = field(default_factory=load_rules)
    birth_floor_us: Mapping[int, int] = field(default_factory=dict)
    medications: Mapping[str, dict[str, Any]] = field(default_factory=dict)
    max_time_us: int = field(default_factory=lambda: now_us() + US_PER_DAY)
    source_file: str | None = None
    record_index: int | None = None
    descriptions: dict[str, str] = field(default_factory=dict)
    fhir_version: str = "auto"


class MappingError(Exception):
    """Raised inside the mapper for a record that must be rejected (field + reason)."""

    def __init__(self, field_name: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field_name
        self.reason = reason


def reference_id(ref: Any, expected_type: str | None = None) -> str | None:
    """Logical id in a Reference (dict or string): ``Patient/1``, ``http://x/fhir/Patient/1/_history/2``,
    ``urn:uuid:1`` -> ``1``. Returns ``None`` when absent; raises :class:`MappingError` on a wrong type."""
    if isinstance(ref, dict):
        ref = ref.get("reference")
    if not isinstance(ref, str) or not ref:
        return None
    # an export names the same Patient / Encounter in many records: each distinct string is parsed once
    parsed = _REF_CACHE.get(ref)
    if parsed is None:
        if len(_REF_CACHE) >= _REF_CACHE_MAX:  # bounded: a worker maps millions of records
            _REF_CACHE.clear()
        parsed = _REF_CACHE[ref] = parse_reference(ref)
    rtype, rid = parsed
    if expected_type and rtype is not None and rtype != expected_type:
        raise MappingError(None, f"reference {ref!r} is not a {expected_type}")
    return rid


_REF_CACHE: dict[str, tuple[str | None, str | None]] = {}
_REF_CACHE_MAX = 1 << 16


def parse_reference(ref: str) -> tuple[str | None, str | None]:
    """``(type, logical id)`` of a non-empty reference string (the uncached part of :func:`reference_id`).

    The type is ``None`` where the reference carries none that is checked (``urn:uuid:``/``urn:oid:``,
    a bare id); the id is ``None`` when empty or absent (``Patient/``, ``_history/2``)."""
    slash = ref.find("/")
    if 0 < slash == ref.rfind("/"):  # the common ``Type/id``: one split, no list (same answer as below)
        rtype, rid = ref[:slash], ref[slash + 1:]
        if "_history" not in (rtype, rid) and not ref.startswith(("urn:uuid:", "urn:oid:")):
            return rtype, rid or None
    if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
        return None, (ref[9:] if ref.startswith("urn:uuid:") else ref[8:])
    parts = ref.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
        if not parts:  # "_history/x": no logical id before the version (it used to raise IndexError)
            return None, None
    if len(parts) >= 2:
        return parts[-2], parts[-1] or None
    return None, parts[-1] or None


def subject_of(resource: dict[str, Any], rules: Rules) -> int | None:
    """``subject_id`` of the Patient a resource belongs to (``None`` when it names none)."""
    return subject_and_ref(resource, rules)[0]


def subject_and_ref(resource: dict[str, Any], rules: Rules) -> tuple[int | None, str | None]:
    """``(subject_of(resource), the Patient's logical id)``; the id is ``None`` whenever the subject is
    (the population path needs both per record: one reference parse)."""
    if resource.get("resourceType") == "Patient":
        pid = resource.get("id")
        return (subject_id_for(pid), pid) if isinstance(pid, str) and pid else (None, None)
    for f in rules.subject_fields:
        ref = resource.get(f)
        if ref is not None:
            try:
                pid = reference_id(ref, "Patient")
            except MappingError:
                return None, None
            return (subject_id_for(pid), pid) if pid else (None, None)
    return None, None


def pick_coding(cc: Any, prefix: str, ctx: MapContext) -> tuple[str, dict[str, Any]]:
    """``(code string, coding)`` for a CodeableConcept: the preferred system's coding, else the first with
    a code."""
    rules = ctx.rules
    codings = ([c for c in (cc.get("coding") or []) if isinstance(c, dict) and c.get("code")]
               if isinstance(cc, dict) else [])
    if not codings:
        raise MappingError(None, "no coding with a code")
    prefs = rules.system_preference.get(prefix, ())
    best, best_rank = codings[0], len(prefs)
    if prefs and len(codings) > 1:  # one coding (the usual case) is the best whatever its rank
        for c in codings:
            name = rules.system_name(c.get("system"))
            rank = prefs.index(name) if name in prefs else len(prefs)
            if rank < best_rank:
                best, best_rank = c, rank
    code = f"{prefix}//{rules.system_name(best.get('system'))}//{str(best['code']).strip()}"
    display = best.get("display") or cc.get("text")
    if display and code not in ctx.descriptions:
        ctx.descriptions[code] = str(display)
    return code, best


def _time(resource: dict[str, Any], paths: tuple[str, ...], required: bool = True) -> int | None:
    path, value = first_path(resource, paths)
    if path is None:
        if required:
            raise MappingError("|".join(paths), "missing time")
        return None
    try:
        return parse_fhir_time(value)
    except TimeParseError as e:
        raise MappingError(path, f"unparseable time: {e}") from None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def value_of(obj: dict[str, Any]) -> tuple[float | None, str | None, str | None]:
    """``(numeric_value, text_value, unit)`` of an Observation or component ``value[x]``.

    A value present but not of its declared type (``valueQuantity.value: "abc"``, ``valueBoolean: 1``)
    raises :class:`MappingError` naming the field: a silent null would look like a missing measurement.
    An absent value (e.g. a Quantity with a unit and a dataAbsentReason only) is ``None``, not an error.
    """
    q = obj.get("valueQuantity")
    if q is not None:
        if not isinstance(q, dict):
            raise MappingError("valueQuantity", "valueQuantity is not a Quantity object")
        v = q.get("value")
        if v is not None and not _number(v):
            raise MappingError("valueQuantity.value", "value is not a number")
        unit = q.get("unit") or q.get("code")
        if unit is not None and not isinstance(unit, str):
            raise MappingError("valueQuantity.unit", "unit is not a string")
        return (None if v is None else float(v)), None, unit
    cc = obj.get("valueCodeableConcept")
    if cc is not None:
        if not isinstance(cc, dict):
            raise MappingError("valueCodeableConcept", "valueCodeableConcept is not an object")
        codings = cc.get("coding") or [{}]
        first = codings[0] if isinstance(codings, list) and isinstance(codings[0], dict) else {}
        text = cc.get("text") or first.get("display") or first.get("code")
        return None, (str(text) if text else None), None
    for key in ("valueString", "valueDateTime", "valueTime", "valueCode"):
        v = obj.get(key)
        if v is None:
            continue
        if not isinstance(v, str):
            raise MappingError(key, "value is not a string")
        if key == "valueDateTime":
            try:
                parse_fhir_time(v)
            except TimeParseError:
                raise MappingError(key, "value is not a FHIR dateTime") from None
        return None, v, None
    v = obj.get("valueBoolean")
    if v is not None:
        if not isinstance(v, bool):
            raise MappingError("valueBoolean", "value is not a boolean")
        return None, "true" if v else "false", None
    for key in ("valueInteger", "valueDecimal"):
        v = obj.get(key)
        if v is None:
            continue
        if not _number(v) or (key == "valueInteger" and not float(v).is_integer()):
            raise MappingError(key, f"value is not {'an integer' if key == 'valueInteger' else 'a number'}")
        return float(v), None, None
    return None, None, None


def _event(sid: int, t: int | None, code: str, source: str, enc: str | None = None,
           num: float | None = None, text: str | None = None, unit: str | None = None) -> Event:
    return {"subject_id": sid, "time": t, "code": code, "numeric_value": num, "text_value": text,
            "encounter_id": enc, "unit": unit, "source": source}


def _encounter_id(resource: dict[str, Any], rules: Rules) -> str | None:
    _, ref = first_path(resource, rules.encounter_fields)
    try:
        return reference_id(ref)
    except MappingError:
        return None


def _map_patient(r: dict[str, Any], sid: int, ctx: MapContext) -> list[Event]:
    rules, src = ctx.rules, "fhir:Patient"
    events = [_event(sid, None, "GENDER//" + rules.gender.get(str(r.get("gender", "")).lower(), "UNKNOWN"),
                     src)]
    for ext in r.get("extension") or []:
        url = ext.get("url") if isinstance(ext, dict) else None
        if url in (rules.race_extension, rules.ethnicity_extension):
            subs = {s.get("url"): s for s in ext.get("extension") or [] if isinstance(s, dict)}
            text = ((subs.get("text") or {}).get("valueString")
                    or ((subs.get("ombCategory") or {}).get("valueCoding") or {}).get("display"))
            if text:
                events.append(_event(sid, None,
                                     ("RACE//" if url == rules.race_extension else "ETHNICITY//") + str(text),
                                     src))
    birth = _patient_birth(r, rules)
    if birth is not None:
        events.append(_event(sid, birth[0], BIRTH_CODE, src))
    death = _time(r, ("deceasedDateTime",), required=False)
    if death is not None:
        events.append(_event(sid, death, DEATH_CODE, src))
    return events


def _patient_birth(r: dict[str, Any], rules: Rules) -> tuple[int, bool] | None:
    """``(birth time, date_only)`` from ``birthDate`` (or its patient-birthTime extension), else ``None``."""
    for ext in (r.get("_birthDate") or {}).get("extension") or []:
        if (isinstance(ext, dict) and ext.get("url") == rules.birth_time_extension
                and ext.get("valueDateTime")):
            try:
                return parse_fhir_time(ext["valueDateTime"]), False
            except TimeParseError as e:
                raise MappingError("birthDate.extension(birthTime)", f"unparseable time: {e}") from None
    t = _time(r, ("birthDate",), required=False)
    return None if t is None else (t, True)


def birth_floor(resource: dict[str, Any], rules: Rules | None = None) -> int | None:
    """Earliest plausible event time for a Patient resource (see :class:`MapContext`), ``None`` if unknown
    or unparseable (the Patient itself is then rejected by the mapper)."""
    try:
        birth = _patient_birth(resource, rules or load_rules())
    except MappingError:
        return None
    if birth is None:
        return None
    return birth[0] - US_PER_DAY if birth[1] else birth[0]


def _map_encounter(r: dict[str, Any], rule: ResourceRule, sid: int, ctx: MapContext) -> list[Event]:
    start = _time(r, rule.start)
    end = _time(r, rule.end, required=False)
    klass = encounter_class(r, ctx.rules)
    enc = r.get("id")
    events = [_event(sid, start, f"ENCOUNTER//{klass}//START", "fhir:Encounter", enc)]
    if end is not None:
        if start is not None and end < start:
            raise MappingError(rule.end[0], "encounter ends before it starts")
        events.append(_event(sid, end, f"ENCOUNTER//{klass}//END", "fhir:Encounter", enc))
    return events


def _map_coded(r: dict[str, Any], rule: ResourceRule, sid: int, ctx: MapContext) -> list[Event]:
    path, cc = first_path(r, rule.code)
    if path is None:
        raise MappingError("|".join(rule.code), "missing code")
    try:
        code, _ = pick_coding(cc, rule.prefix or "OBSERVATION", ctx)
    except MappingError as e:
        raise MappingError(path, e.reason) from None
    t = _time(r, rule.time)
    return [_event(sid, t, code, "fhir:" + r["resourceType"], _encounter_id(r, ctx.rules))]


def observation_prefix(r: dict[str, Any], rules: Rules) -> str:
    """LAB / VITAL / OBSERVATION from Observation.category (any system, R4 or older category URLs)."""
    for cat in r.get("category") or []:
        codings = (cat.get("coding") or []) if isinstance(cat, dict) else []
        for c in codings:
            p = rules.observation_categories.get(str(c.get("code", "")).lower())
            if p:
                return p
    return "OBSERVATION"


def _map_observation(r: dict[str, Any], rule: ResourceRule, sid: int, ctx: MapContext) -> list[Event]:
    prefix = observation_prefix(r, ctx.rules)
    t = _time(r, rule.time)
    enc = _encounter_id(r, ctx.rules)
    events: list[Event] = []
    comps = [c for c in r.get("component") or [] if isinstance(c, dict)]
    for i, comp in enumerate(comps):
        try:
            code, _ = pick_coding(comp.get("code"), prefix, ctx)
        except MappingError as e:
            raise MappingError(f"component.{i}.code", e.reason) from None
        try:
            num, text, unit = value_of(comp)
        except MappingError as e:
            raise MappingError(f"component.{i}.{e.field}", e.reason) from None
        events.append(_event(sid, t, code, "fhir:Observation", enc, num, text, unit))
    num, text, unit = value_of(r)
    if not comps or num is not None or text is not None:
        try:
            code, _ = pick_coding(r.get("code"), prefix, ctx)
        except MappingError as e:
            raise MappingError("code", e.reason) from None
        events.insert(0, _event(sid, t, code, "fhir:Observation", enc, num, text, unit))
    return events


def _medication_concept(r: dict[str, Any], ctx: MapContext) -> tuple[str, Any]:
    """``(field, CodeableConcept)`` of the medication, following a reference to a Medication when needed."""
    if isinstance(r.get("medicationCodeableConcept"), dict):
        return "medicationCodeableConcept", r["medicationCodeableConcept"]
    med = r.get("medication")  # R5: CodeableReference
    if isinstance(med, dict) and isinstance(med.get("concept"), dict):
        return "medication.concept", med["concept"]
    field_name, ref = ("medicationReference", r.get("medicationReference"))
    if ref is None and isinstance(med, dict):
        field_name, ref = "medication.reference", med.get("reference")
    if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
        raise MappingError("medication[x]", "missing medication")
    target = ref["reference"]
    if target.startswith("#"):
        found = next((c for c in r.get("contained") or [] if isinstance(c, dict)
                      and c.get("id") == target[1:]), None)
    else:
        found = ctx.medications.get(f"Medication/{reference_id(ref, 'Medication')}")
    if found is None:
        raise MappingError(field_name, f"referenced Medication {target!r} not found")
    return field_name + "->Medication.code", found.get("code")


def _map_medication(r: dict[str, Any], rule: ResourceRule, sid: int, ctx: MapContext) -> list[Event]:
    field_name, cc = _medication_concept(r, ctx)
    try:
        code, _ = pick_coding(cc, rule.prefix or "MEDICATION", ctx)
    except MappingError as e:
        raise MappingError(field_name, e.reason) from None
    t = _time(r, rule.time)
    return [_event(sid, t, code, "fhir:" + r["resourceType"], _encounter_id(r, ctx.rules))]


_HANDLERS = {"encounter": _map_encounter, "coded": _map_coded, "observation": _map_observation,
             "medication": _map_medication}


NOT_COMPUTED: Any = object()  # ``map_resource(sid=...)`` default: the subject is looked up here


def map_resource(resource: dict[str, Any], ctx: MapContext,
                 sid: int | None = NOT_COMPUTED) -> tuple[list[Event], list[Reject]]:
    """Map one FHIR resource to MEDS events (dicts with the EVENTS_SCHEMA columns) or to one reject.

    ``sid``: :func:`subject_of` the resource when the caller already has it (the population path computes
    it once per record); by default it is computed here.

    A resource either yields all its events or none: any problem (no subject, missing or unparseable
    time, a time before the subject's birth or after ``ctx.max_time_us``, no usable code, a void
    status) gives ``([], [reject])`` with ``field`` and ``reason``. Types without a rule give
    ``([], [])`` (the caller counts them as skipped by design).
    """
    rtype = resource.get("resourceType")
    rule = ctx.rules.resources.get(rtype) if isinstance(rtype, str) else None
    if rule is None:
        return [], []
    try:
        if resource.get("status") in ctx.rules.void_statuses:
            raise MappingError("status", f"status {resource['status']}")
        if sid is NOT_COMPUTED:
            sid = subject_of(resource, ctx.rules)
        if sid is None:
            if rtype == "Patient":
                raise MappingError("id", "missing Patient id")
            present, _ = first_path(resource, ctx.rules.subject_fields)
            if present is not None:  # e.g. a Group or Device subject: no patient timeline to put it on
                raise MappingError(present, "subject is not a Patient reference")
            raise MappingError("|".join(ctx.rules.subject_fields), "missing subject reference")
        if rule.handler == "patient":
            events = _map_patient(resource, sid, ctx)
            own = birth_floor(resource, ctx.rules)
            floor = own if own is not None else ctx.birth_floor_us.get(sid)
        else:
            events = _HANDLERS[rule.handler](resource, rule, sid, ctx)
            floor = ctx.birth_floor_us.get(sid)
        for e in events:
            t = e["time"]
            if t is None:
                continue
            if t > ctx.max_time_us:
                raise MappingError(_time_field(resource, rule, e["code"]),
                                   f"impossible time: {e['code']} in the far future")
            if floor is not None and t < floor:
                raise MappingError(_time_field(resource, rule, e["code"]),
                                   f"impossible time: {e['code']} before the subject's birth")
        return events, []
    except MappingError as e:
        return [], [make_reject(ctx, rtype, resource.get("id"), e.field, e.reason)]


def _time_field(resource: dict[str, Any], rule: ResourceRule, code: str) -> str | None:
    """The field whose time made ``code``'s event impossible (for the reject's ``field``)."""
    if rule.handler == "patient":
        return "deceasedDateTime" if code == DEATH_CODE else "birthDate"
    paths = rule.end if code.endswith("//END") and rule.end else (rule.start or rule.time)
    return first_path(resource, paths)[0]


def make_reject(ctx: MapContext | None, rtype: Any, rid: Any, field_name: str | None, reason: str) -> Reject:
    """A REJECTS_SCHEMA row located at ``ctx.source_file`` / ``ctx.record_index``."""
    return {"source_file": ctx.source_file if ctx else None,
            "record_index": ctx.record_index if ctx else None,
            "resource_type": rtype if isinstance(rtype, str) else None,
            "resource_id": rid if isinstance(rid, str) else None, "field": field_name, "reason": reason}
