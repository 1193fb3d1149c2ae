"""Task specifications: the YAML language of ``tasks/*.yaml`` parsed into typed, validated dataclasses.

The language is documented in ``tasks/README.md``; this module is its only parser. Every error names the task
(or file) and the offending field, e.g. ``task 'readmission_30d': outcome.within: bad duration 'x'``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pandas as pd

from ehrfm.labels.aliases import ENCOUNTER_ALIASES, canonical_code
from ehrfm.schema import DEATH_CODE

KINDS = ("binary", "time_to_event", "forecast")
REQUIREMENTS = ("alive", "encounter_ongoing")
ENCOUNTER_START = re.compile(r"^ENCOUNTER//[^/]+//START$")
ENCOUNTER_END = re.compile(r"^ENCOUNTER//[^/]+//END$")
_DURATION = re.compile(r"^([+-]?)(\d+(?:\.\d+)?)\s*(s|min|h|d|w|y)$")
_UNIT_SECONDS = {"s": 1, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class TaskSpecError(ValueError):
    """A malformed task specification; the message names the task and the field."""


def parse_duration(value: Any, where: str) -> pd.Timedelta:
    """Parse ``"30d"``, ``"+24h"``, ``"0h"``, ``"90min"``, ``"1y"`` (= 365 d) into a Timedelta.

    ``where`` ("task 'x': outcome.within") prefixes the error message.
    """
    text = str(value).strip()
    m = _DURATION.match(text)
    if not m:
        raise TaskSpecError(f"{where}: bad duration {value!r} (want e.g. 0h, +24h, 30d, 1y)")
    sign = -1 if m.group(1) == "-" else 1
    return pd.Timedelta(seconds=sign * float(m.group(2)) * _UNIT_SECONDS[m.group(3)])


@dataclass(frozen=True)
class CodePattern:
    """One code pattern: exact (``MEDS_DEATH``), prefix (``DIAGNOSIS//*``) or regex (``regex:^LAB//.*``)."""

    text: str

    @property
    def regex(self) -> str:
        """The pattern as an anchored regular expression (valid in Python ``re`` and Java / Spark
        ``rlike``)."""
        if self.text.startswith("regex:"):
            return f"^(?:{self.text[len('regex:'):]})$"
        if self.text.endswith("*"):
            return "^" + re.escape(self.text[:-1]) + ".*$"
        return "^" + re.escape(self.text) + "$"

    def describe(self) -> str:
        """Human-readable form for messages."""
        return self.text


def patterns_regex(patterns: tuple[CodePattern, ...]) -> str:
    """One anchored alternation matching any of ``patterns``."""
    return "|".join(f"(?:{p.regex})" for p in patterns)


def relevant_codes_regex(specs: Iterable[TaskSpec]) -> str:
    """Regex of every code the engines read for ``specs``: the task patterns, encounter START/END (canonical
    and every aliased code, :mod:`ehrfm.labels.aliases`) and death. A pattern that matches only an alias's
    canonical form is covered by the aliased codes."""
    patterns: tuple[CodePattern, ...] = (CodePattern("regex:ENCOUNTER//[^/]+//(START|END)"),
                                         *(CodePattern(f"regex:{rx}") for rx, _ in ENCOUNTER_ALIASES),
                                         CodePattern(DEATH_CODE))
    for s in specs:
        patterns += s.all_patterns()
    return patterns_regex(tuple(dict.fromkeys(patterns)))


@lru_cache(maxsize=256)
def compiled_patterns(patterns: tuple[CodePattern, ...]) -> re.Pattern[str]:
    """:func:`patterns_regex` compiled once per pattern tuple."""
    return re.compile(patterns_regex(patterns))


def pattern_hits(rx: re.Pattern[str], code: str) -> bool:
    """Whether a task pattern matches ``code``: the raw code or its canonical encounter alias."""
    if rx.match(code):
        return True
    canon = canonical_code(code)
    return canon != code and rx.match(canon) is not None


def codes_matching(codes: pd.Series, patterns: tuple[CodePattern, ...]) -> pd.Series:
    """Boolean mask of ``codes`` (strings) that match any pattern, raw or through its encounter alias (the
    regex runs once per distinct code)."""
    if not patterns or len(codes) == 0:
        return pd.Series(False, index=codes.index, dtype=bool)
    rx = compiled_patterns(patterns)
    hits = [c for c in pd.unique(codes.dropna()) if pattern_hits(rx, str(c))]
    return codes.isin(hits)


@dataclass(frozen=True)
class IndexSpec:
    """The trigger: index events and what must hold at prediction time."""

    codes: tuple[CodePattern, ...]
    require: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutcomeSpec:
    """What is predicted. Windows are ``(prediction_time, end]``: events AT prediction_time are inputs."""

    codes: tuple[CodePattern, ...] = ()
    within: pd.Timedelta | None = None  # window end = prediction_time + within
    until: str | None = None  # "encounter_end": window end = the index encounter's END (+ grace)
    grace: pd.Timedelta = pd.Timedelta(0)
    other_encounter: bool = False  # the outcome event must not belong to the index encounter
    same_encounter: bool = False  # events carrying the index encounter's id count even after the window end
    encounter_duration_gt: pd.Timedelta | None = None  # binary on the index encounter's END - START
    at: str | None = None  # "next_encounter" (forecast)
    next_encounter: tuple[CodePattern, ...] = ()  # START codes that open the "next encounter"
    allow_empty: bool = False  # forecast: keep rows whose target set is empty


@dataclass(frozen=True)
class ExclusionSpec:
    """Index events dropped before labelling."""

    death_during_encounter: pd.Timedelta | None = None  # drop when MEDS_DEATH in [START, END + this]
    min_history: pd.Timedelta = pd.Timedelta(0)  # first timed event at or before prediction_time - this


@dataclass(frozen=True)
class CensoringSpec:
    """How missing follow-up and deaths before the outcome are handled."""

    # "record_end": follow-up ends at the subject's last event; "none": unlimited
    followup: str = "record_end"
    death: str = "negative"  # binary, non-death outcome, death in the window first: "negative" | "exclude"


@dataclass(frozen=True)
class TaskSpec:
    """A parsed, validated task (see tasks/README.md)."""

    name: str
    kind: str
    index: IndexSpec
    prediction_offset: pd.Timedelta
    outcome: OutcomeSpec
    exclusions: ExclusionSpec = field(default_factory=ExclusionSpec)
    censoring: CensoringSpec = field(default_factory=CensoringSpec)
    description: str = ""

    def all_patterns(self) -> tuple[CodePattern, ...]:
        """Every code pattern the spec mentions (index, outcome, next encounter)."""
        return self.index.codes + self.outcome.codes + self.outcome.next_encounter

    def pattern_fields(self) -> list[tuple[str, CodePattern]]:
        """(field name, pattern) pairs, for "codes not in data" warnings."""
        out = [("index.codes", p) for p in self.index.codes]
        out += [("outcome.codes", p) for p in self.outcome.codes]
        out += [("outcome.next_encounter", p) for p in self.outcome.next_encounter]
        return out
