"""Encounter class -> the CLASS part of ``ENCOUNTER//<CLASS>//START|END``.

Where the class lives differs by FHIR version: DSTU2 a bare string, STU3 and R4 a ``Coding``,
R5 a list of ``CodeableConcept``. Exports also use other systems or plain words ("inpatient",
"wellness", "urgentcare"). Order of evidence: exact match of class codes, then of class displays/texts,
then keywords in class displays, then keywords in ``Encounter.type`` / ``serviceType``; else OTHER.
"""

from __future__ import annotations

from typing import Any

from ehrfm.ingest.fhir.rules import Rules


def _codes_and_texts(value: Any) -> tuple[list[str], list[str]]:
    """Codes and display/text strings found in a string, Coding, CodeableConcept(R5: CodeableReference) or
    list."""
    codes: list[str] = []
    texts: list[str] = []
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, str):
            codes.append(item)
        elif isinstance(item, dict):
            if isinstance(item.get("concept"), dict):  # R5 CodeableReference (serviceType)
                item = item["concept"]
            if "coding" in item or "text" in item:
                for c in item.get("coding") or []:
                    if isinstance(c, dict):
                        codes += [str(c["code"])] if c.get("code") else []
                        texts += [str(c["display"])] if c.get("display") else []
                texts += [str(item["text"])] if item.get("text") else []
            else:  # a bare Coding
                codes += [str(item["code"])] if item.get("code") else []
                texts += [str(item["display"])] if item.get("display") else []
    return codes, texts


def encounter_class(resource: dict[str, Any], rules: Rules) -> str:
    """CLASS of an Encounter (INPATIENT, EMERGENCY, AMBULATORY, OBSERVATION, VIRTUAL, HOME, ICU, OTHER)."""
    codes, texts = _codes_and_texts(resource.get("class"))
    for candidate in codes + texts:
        found = rules.encounter_class(candidate)
        if found:
            return found
    fallback: list[Any] = []
    for key in ("type", "serviceType"):
        v = resource.get(key)
        fallback += v if isinstance(v, list) else ([v] if v else [])
    fallback_codes, fallback_texts = _codes_and_texts(fallback)
    for text in texts + fallback_texts:
        found = rules.encounter_keyword_class(text)
        if found:
            return found
    # a type/serviceType code that is itself a class word (e.g. a local "emergency" code)
    for candidate in fallback_codes:
        found = rules.encounter_class(candidate)
        if found:
            return found
    return rules.encounter_default_class
