"""Descriptions of the codes ehrfm mints itself (not from a source vocabulary): every code in
``metadata/codes.parquet`` gets a description, whichever source wrote it.

Sources describe their own codes first (FHIR ``coding.display``, MIMIC-IV dictionaries and templates in
``ehrfm/ingest/mimic/rules.yaml``); the writer falls back to :func:`minted_description` for a code left
without one. Light module: ``re`` only.
"""

from __future__ import annotations

import re

from ehrfm.schema import BIRTH_CODE, DEATH_CODE

_FIXED = {
    BIRTH_CODE: "Birth (MEDS_BIRTH: the subject's date of birth)",
    DEATH_CODE: "Death (MEDS_DEATH: the subject's date of death)",
}
# (full-match regex, template over its groups): the families ehrfm/ingest/fhir/mapper.py mints
_TEMPLATES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"ENCOUNTER//([^/]+)//START"), "Encounter start (class {0})"),
    (re.compile(r"ENCOUNTER//([^/]+)//END"), "Encounter end (class {0})"),
    (re.compile(r"GENDER//(.+)"), "Administrative gender: {0}"),
    (re.compile(r"RACE//(.+)"), "Race: {0}"),
    (re.compile(r"ETHNICITY//(.+)"), "Ethnicity: {0}"),
)


def minted_description(code: str) -> str | None:
    """The description of a code ehrfm mints (``MEDS_BIRTH``, ``ENCOUNTER//INPATIENT//START``,
    ``GENDER//F``, ``RACE//…``, ``ETHNICITY//…``), else None."""
    if code in _FIXED:
        return _FIXED[code]
    for rx, template in _TEMPLATES:
        m = rx.fullmatch(code)
        if m is not None:
            return template.format(*m.groups())
    return None
