"""FHIR R4 resources (as JSON lines) for a :class:`~ehrfm.synth.record.PatientRecord`.

Resources are plain dicts serialised with one compact ``json.JSONEncoder`` (no orjson): fast enough and
byte-stable. Cross references are relative: ``Patient/<id>``, ``Encounter/<id>``, ``Medication/<id>``.
"""

from __future__ import annotations

import json
import time
from typing import Any

from ehrfm.synth.catalog import (
    ACUTE_AMB,
    ACUTE_HOSPITAL,
    BP_PANEL,
    CHRONIC,
    LABS,
    LOINC,
    MEDICATION_RESOURCES,
    MEDS,
    PROCEDURES,
    RACES,
    UCUM,
    VITALS,
    Code,
)
from ehrfm.synth.record import PatientRecord
from ehrfm.synth.site import SITES, SiteProfile

RESOURCE_TYPES = ("Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure",
                  "Medication")
_DUMPS = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_CONDITION_CODES: dict[str, Code] = {**CHRONIC, **ACUTE_HOSPITAL, **ACUTE_AMB}
_TERM = "http://terminology.hl7.org/CodeSystem/"
_CAT_LAB = [
    {"coding": [{"system": _TERM + "observation-category", "code": "laboratory", "display": "Laboratory"}]}]
_CAT_VITAL = [
    {"coding": [{"system": _TERM + "observation-category", "code": "vital-signs", "display": "Vital Signs"}]}]
_CLINICAL = {"coding": [{"system": _TERM + "condition-clinical", "code": "active"}]}
_VERIFIED = {"coding": [{"system": _TERM + "condition-ver-status", "code": "confirmed"}]}
_DISPOSITION = {"home": "Home", "snf": "Skilled nursing facility", "exp": "Expired"}
_date_cache: dict[int, str] = {}
_tod_cache: dict[int, str] = {}


def iso(t: int) -> str:
    """FHIR dateTime of epoch seconds ``t`` in UTC, e.g. ``2019-03-04T10:22:00Z``."""
    day, sec = divmod(t, 86400)
    date = _date_cache.get(day)
    if date is None:
        date = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
        _date_cache[day] = date
    tod = _tod_cache.get(sec)
    if tod is None:
        h, rem = divmod(sec, 3600)
        tod = _tod_cache[sec] = f"T{h:02d}:{rem // 60:02d}:{rem % 60:02d}Z"
    return date + tod


def _cc(c: Code) -> dict[str, Any]:
    return {"coding": [{"system": c.system, "code": c.code, "display": c.display}], "text": c.display}


def _qty(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def medication_id(key: str) -> str:
    """FHIR id of a catalog Medication (ids allow letters, digits, '-' and '.')."""
    return "med-" + key.replace("_", "-")


def medication_lines() -> list[str]:
    """The Medication catalog (identical for every population size, so files stay prefix-stable)."""
    return [
        _DUMPS({"resourceType": "Medication", "id": medication_id(key), "status": "active",
                "code": _cc(code)})
        for key, code in MEDICATION_RESOURCES.items()
    ]


def patient_lines(rec: PatientRecord) -> dict[str, list[str]]:
    """NDJSON lines of every resource of one patient, by resource type (no ``Medication``)."""
    subj = {"reference": f"Patient/{rec.id}"}
    code, text, _ = RACES[rec.race]
    patient: dict[str, Any] = {
        "resourceType": "Patient",
        "id": rec.id,
        "extension": [{
            "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
            "extension": [
                {"url": "ombCategory",
                 "valueCoding": {"system": "urn:oid:2.16.840.1.113883.6.238", "code": code,
                                                       "display": text}},
                {"url": "text", "valueString": text},
            ],
        }],
        "identifier": [{"system": "urn:ehrfm:synth:mrn", "value": f"MRN{int(rec.id):09d}"}],
        "gender": rec.sex,
        "birthDate": iso(rec.birth)[:10],
    }
    if rec.death is not None:
        patient["deceasedDateTime"] = iso(rec.death)
    site = SITES[rec.site]
    enc_lines = []
    for e in rec.encounters:
        klass = site.encounter_classes[e.cls]
        enc: dict[str, Any] = {
            "resourceType": "Encounter", "id": e.id, "status": "finished",
            "class": {"system": klass.system, "code": klass.code, "display": klass.display},
            "subject": subj, "period": {"start": iso(e.start), "end": iso(e.end)},
        }
        if e.cls == "IMP":
            enc["hospitalization"] = {"dischargeDisposition": {"coding": [{
                "system": _TERM + "discharge-disposition", "code": e.disposition,
                "display": _DISPOSITION[e.disposition]}]}}
        enc_lines.append(_DUMPS(enc))
    cond_lines = []
    for i, c in enumerate(rec.conditions):
        cond_lines.append(_DUMPS({
            "resourceType": "Condition", "id": f"cond-{rec.id}-{i}", "clinicalStatus": _CLINICAL,
            "verificationStatus": _VERIFIED,
            "category": [{"coding": [{"system": _TERM + "condition-category", "code": c.category}]}],
            "code": _cc(_CONDITION_CODES[c.key]), "subject": subj,
            "encounter": {"reference": f"Encounter/{c.encounter_id}"},
            "onsetDateTime": iso(c.onset), "recordedDate": iso(c.recorded),
        }))
    return {
        "Patient": [_DUMPS(patient)], "Encounter": enc_lines, "Condition": cond_lines,
        "Observation": _observations(rec, subj, site), "MedicationRequest": _med_requests(rec, subj),
        "Procedure": _procedures(rec, subj),
    }


def _obs_head(category: list[dict[str, Any]], code: str, display: str, system: str = LOINC) -> str:
    """The constant JSON fragment of an Observation kind: ``"category":...,"code":...`` (no braces)."""
    return _DUMPS({"category": category,
                   "code": {"coding": [{"system": system, "code": code, "display": display}]}})[1:-1]


def _lab_heads(site: SiteProfile) -> dict[str, tuple[str, str]]:
    """Per lab key: the constant JSON fragment (with the site's coding) and the unit as JSON."""
    heads = {}
    for k, m in LABS.items():
        c = site.lab_coding(k)
        heads[k] = (_obs_head(_CAT_LAB, c.code, c.display, c.system), _DUMPS(m.unit))
    return heads


# Observations are ~75% of all resources: their constant parts are serialised once (with the same
# encoder) and spliced, which makes them ~3x cheaper than dumping a dict each; tests parse every line.
_LAB_HEAD = {name: _lab_heads(site) for name, site in SITES.items()}
_VITAL_HEAD = {k: (_obs_head(_CAT_VITAL, m.code, m.display), _DUMPS(m.unit)) for k, m in VITALS.items()}
_BP_HEAD = _obs_head(_CAT_VITAL, BP_PANEL.code, BP_PANEL.display)
_BP_CODES = [_DUMPS({"coding": [{"system": LOINC, "code": VITALS[k].code, "display": VITALS[k].display}]})
             for k in ("systolic", "diastolic")]


def _q(value: float, unit_json: str) -> str:
    return f'{{"value":{value!r},"unit":{unit_json},"system":"{UCUM}","code":{unit_json}}}'


def _observations(rec: PatientRecord, subj: dict[str, str], site: SiteProfile) -> list[str]:
    out = []
    lab_head = _LAB_HEAD[site.name]
    n = 0
    head = f'{{"resourceType":"Observation","id":"obs-{rec.id}-'
    subject = f'"subject":{_DUMPS(subj)},"encounter":{{"reference":"Encounter/'
    for lab in rec.labs:
        frag, unit = lab_head[lab.key]
        n += 1
        out.append(f'{head}{n}","status":"final",{frag},{subject}{lab.encounter_id}"}},'
                   f'"effectiveDateTime":"{iso(lab.time)}","valueQuantity":{_q(lab.value, unit)}}}')
    for v in rec.vitals:
        when = iso(v.time)
        for key, value in (("heart_rate", v.heart_rate), ("spo2", v.spo2)):
            frag, unit = _VITAL_HEAD[key]
            n += 1
            out.append(f'{head}{n}","status":"final",{frag},{subject}{v.encounter_id}"}},'
                       f'"effectiveDateTime":"{when}","valueQuantity":{_q(value, unit)}}}')
        n += 1
        mmhg = _DUMPS("mm[Hg]")
        out.append(f'{head}{n}","status":"final",{_BP_HEAD},{subject}{v.encounter_id}"}},'
                   f'"effectiveDateTime":"{when}","component":['
                   f'{{"code":{_BP_CODES[0]},"valueQuantity":{_q(v.systolic, mmhg)}}},'
                   f'{{"code":{_BP_CODES[1]},"valueQuantity":{_q(v.diastolic, mmhg)}}}]}}')
    return out


def _med_requests(rec: PatientRecord, subj: dict[str, str]) -> list[str]:
    out = []
    for i, m in enumerate(rec.meds):
        res: dict[str, Any] = {
            "resourceType": "MedicationRequest", "id": f"mr-{rec.id}-{i}", "status": "completed",
            "intent": "order",
        }
        if m.by_reference:
            res["medicationReference"] = {"reference": f"Medication/{medication_id(m.key)}"}
        else:
            res["medicationCodeableConcept"] = _cc(MEDS[m.key])
        res.update({"subject": subj, "encounter": {"reference": f"Encounter/{m.encounter_id}"},
                    "authoredOn": iso(m.time)})
        out.append(_DUMPS(res))
    return out


def _procedures(rec: PatientRecord, subj: dict[str, str]) -> list[str]:
    return [
        _DUMPS({
            "resourceType": "Procedure", "id": f"proc-{rec.id}-{i}", "status": "completed",
            "code": _cc(PROCEDURES[p.key]), "subject": subj,
            "encounter": {"reference": f"Encounter/{p.encounter_id}"}, "performedDateTime": iso(p.time),
        })
        for i, p in enumerate(rec.procedures)
    ]
