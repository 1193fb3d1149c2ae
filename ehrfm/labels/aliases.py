"""Encounter code aliases: the one table that maps other datasets' encounter boundary codes onto ours.

The label engines reason about encounters only through the canonical form ``ENCOUNTER//<CLASS>//START|END``
(docs/CONVENTIONS.md; FHIR and synthetic data). The MEDS MIMIC-IV ETL -- and so our MIMIC-IV ingest, which
follows it -- writes ``HOSPITAL_ADMISSION//<type>//<location>``, ``HOSPITAL_DISCHARGE//<location>``,
``ED_REGISTRATION`` and ``ED_OUT`` instead. Each such code has one canonical alias here; both engines
(:mod:`ehrfm.labels.engine`, :mod:`ehrfm.labels.spark_engine`) build encounters from the canonical form, and
a task's code pattern matches an event when it matches the raw code OR its alias, so the shipped task YAMLs
run unchanged on either convention and a pattern such as ``HOSPITAL_DISCHARGE//HOME`` still works.

ICU stays (``ICU_ADMISSION//…`` / ``ICU_DISCHARGE//…``) are deliberately not encounters: our MIMIC-IV ingest
never treated them as such (an ICU stay lies inside an admission and carries its ``hadm_id``, so as a second
class of the same id it would only add an encounter no shipped task indexes). A task can still name them.

Only ``re`` is imported, so any module (a tokenizer config, a Spark expression builder) can read the table.
"""

from __future__ import annotations

import re
from functools import lru_cache

# (full-match regex over the raw code, canonical code). Regexes are valid in Python ``re`` and Java
# (Spark ``rlike``). The optional ``//…`` tail accepts both the ETL's bare ``ED_REGISTRATION`` and the
# ``ED_REGISTRATION//…`` form MEDS-DEV's MIMIC-IV predicates match.
ENCOUNTER_ALIASES: tuple[tuple[str, str], ...] = (
    (r"HOSPITAL_ADMISSION(?://.*)?", "ENCOUNTER//INPATIENT//START"),
    (r"HOSPITAL_DISCHARGE(?://.*)?", "ENCOUNTER//INPATIENT//END"),
    (r"ED_REGISTRATION(?://.*)?", "ENCOUNTER//EMERGENCY//START"),
    (r"ED_OUT(?://.*)?", "ENCOUNTER//EMERGENCY//END"),
)
# the canonical encounter boundary: group 1 = class, group 2 = START | END
ENCOUNTER_REGEX = r"^ENCOUNTER//([^/]+)//(START|END)$"


def alias_regex(rx: str) -> str:
    """``rx`` (one alias table entry) as an anchored regular expression."""
    return f"^(?:{rx})$"


_COMPILED = tuple((re.compile(alias_regex(rx)), canon) for rx, canon in ENCOUNTER_ALIASES)


def aliased_codes_regex() -> str:
    """One anchored alternation matching every raw code that has an alias."""
    return "|".join(alias_regex(rx) for rx, _ in ENCOUNTER_ALIASES)


@lru_cache(maxsize=65536)
def canonical_code(code: str) -> str:
    """The code as the engines see it for encounter logic: its alias when it has one, else itself."""
    for rx, canon in _COMPILED:
        if rx.match(code):
            return canon
    return code
