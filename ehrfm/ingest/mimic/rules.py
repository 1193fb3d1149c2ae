"""Load the MIMIC-IV mapping rules (``rules.yaml``) and compile their code templates to Spark columns."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from pyspark.sql import Column

RULES_PATH = Path(__file__).with_name("rules.yaml")  # in a source tree; read through importlib.resources
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")  # {column} in a template (codes and descriptions)
UNKNOWN = "UNK"  # the MEDS MIMIC-IV ETL's filler for a null code part (its `?? 'UNK'`)


@dataclass(frozen=True)
class TableSpec:
    """Where a source table lives and how its records are named in rejects."""

    name: str
    path: str
    id: str
    optional: bool = False
    prepare: str | None = None


@dataclass(frozen=True)
class EventRule:
    """One kind of event drawn from one table (see the header of rules.yaml for the fields)."""

    table: str
    code: str
    time: str | None = None
    end_of_day: bool = False
    when: str | None = None
    unknown: tuple[str, ...] = ()
    numeric: str | None = None
    text: str | None = None
    unit: str | None = None
    encounter: str | None = None

    @property
    def name(self) -> str:
        """A readable rule name for summaries, e.g. ``admissions:ED_REGISTRATION``."""
        return f"{self.table}:{self.code}"

    def columns(self) -> set[str]:
        """Every source column the rule reads."""
        cols = set(template_columns(self.code))
        cols.update(c for c in (self.time, self.when, self.numeric, self.text, self.unit, self.encounter)
                    if c)
        return cols


@dataclass(frozen=True)
class Dictionary:
    """A dictionary table joined to the groups of a description rule's match (see rules.yaml)."""

    path: str
    key: tuple[str, ...]
    requires: str | None = None


@dataclass(frozen=True)
class DescriptionRule:
    """How the codes matching ``match`` are described and given parents (see the header of rules.yaml)."""

    match: str
    description: str | None = None
    fallback: str | None = None
    dictionary: Dictionary | None = None
    parents: tuple[str, ...] = ()
    derive: str | None = None

    @property
    def regex(self) -> re.Pattern[str]:
        """``match`` compiled (matched against the whole code)."""
        return re.compile(self.match)


@dataclass(frozen=True)
class MimicRules:
    """The whole rules table."""

    tables: dict[str, TableSpec]
    events: list[EventRule]
    descriptions: list[DescriptionRule] = field(default_factory=list)


def template_columns(template: str) -> list[str]:
    """Column names referenced by ``{col}`` placeholders, in order."""
    return PLACEHOLDER.findall(template)


def load_rules(path: str | Path | None = None) -> MimicRules:
    """Parse rules.yaml (or another file in the same format) and check its references."""
    # importlib.resources also reads the packaged default from a zip or wheel (spark-submit --py-files).
    text = Path(path).read_text() if path else \
        resources.files("ehrfm.ingest.mimic").joinpath("rules.yaml").read_text(encoding="utf-8")
    raw: dict[str, Any] = yaml.safe_load(text)
    tables = {name: TableSpec(name=name, **spec) for name, spec in raw["tables"].items()}
    events = []
    for i, r in enumerate(raw["events"]):
        r = dict(r)
        r["unknown"] = tuple(r.get("unknown", ()))
        rule = EventRule(**r)
        if rule.table not in tables:
            raise ValueError(f"rules: events[{i}] names unknown table {rule.table!r}")
        bad = set(rule.unknown) - set(template_columns(rule.code))
        if bad:
            raise ValueError(f"rules: events[{i}] ({rule.name}) lists unknown={sorted(bad)} not in its code "
                             "template")
        events.append(rule)
    descriptions = [_description_rule(i, d) for i, d in enumerate(raw.get("descriptions", []))]
    return MimicRules(tables, events, descriptions)


def _description_rule(i: int, raw: dict[str, Any]) -> DescriptionRule:
    """One ``descriptions`` entry, checked: a valid regex, and every template field it can fill."""
    from ehrfm.ingest.mimic.codes import DERIVED

    d = dict(raw)
    if "dictionary" in d:
        d["dictionary"] = Dictionary(**{**d["dictionary"], "key": tuple(d["dictionary"]["key"])})
    d["parents"] = tuple(d.get("parents", ()))
    rule = DescriptionRule(**d)
    try:
        groups = set(rule.regex.groupindex)
    except re.error as e:
        raise ValueError(f"rules: descriptions[{i}] match {rule.match!r} is not a regex: {e}") from None
    if rule.derive is not None and rule.derive not in DERIVED:
        raise ValueError(f"rules: descriptions[{i}] derive={rule.derive!r} is not one of {sorted(DERIVED)}")
    if rule.dictionary is not None and not set(rule.dictionary.key) <= groups:
        raise ValueError(f"rules: descriptions[{i}] dictionary key {list(rule.dictionary.key)} names a group"
                         f" that {rule.match!r} lacks")
    if rule.fallback is not None and not set(template_columns(rule.fallback)) <= groups | {"text_value"}:
        raise ValueError(f"rules: descriptions[{i}] fallback {rule.fallback!r} uses a field that is not a"
                         " group of its match")
    if rule.description is None and not rule.parents:
        raise ValueError(f"rules: descriptions[{i}] ({rule.match!r}) has neither description nor parents")
    return rule


def template_column(template: str, unknown: tuple[str, ...] = (), fallback: str = UNKNOWN) -> Column:
    """Spark column filling ``template`` from the row: null when a placeholder column outside ``unknown``
    is null or blank (the caller turns that into a reject); ``unknown`` columns fall back to ``fallback``."""
    from pyspark.sql import functions as F

    parts: list[Column] = []
    pos = 0
    for m in PLACEHOLDER.finditer(template):
        if m.start() > pos:
            parts.append(F.lit(template[pos : m.start()]))
        value = F.trim(F.col(m.group(1)).cast("string"))
        value = F.when(value == "", F.lit(None)).otherwise(value)
        parts.append(F.coalesce(value, F.lit(fallback)) if m.group(1) in unknown else value)
        pos = m.end()
    if pos < len(template):
        parts.append(F.lit(template[pos:]))
    return F.concat(*parts) if parts else F.lit(template)  # concat is null when any part is null


def first_missing(template: str, unknown: tuple[str, ...] = ()) -> Column:
    """Spark column naming the first required placeholder column that is null/blank (null when none)."""
    from pyspark.sql import functions as F

    cases = None
    for col in template_columns(template):
        if col in unknown:
            continue
        v = F.trim(F.col(col).cast("string"))
        cond = v.isNull() | (v == "")
        cases = F.when(cond, F.lit(col)) if cases is None else cases.when(cond, F.lit(col))
    return cases if cases is not None else F.lit(None).cast("string")
