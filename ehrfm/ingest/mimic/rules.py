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
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
UNKNOWN = "UNKNOWN"


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
        """A readable rule name for summaries, e.g. ``admissions:ENCOUNTER//INPATIENT//START``."""
        return f"{self.table}:{self.code}"

    def columns(self) -> set[str]:
        """Every source column the rule reads."""
        cols = set(template_columns(self.code))
        cols.update(c for c in (self.time, self.when, self.numeric, self.text, self.unit, self.encounter)
                    if c)
        return cols


@dataclass(frozen=True)
class DescriptionRule:
    """Code descriptions drawn from a dictionary table."""

    path: str
    code: str
    description: str
    requires: str | None = None


@dataclass(frozen=True)
class MimicRules:
    """The whole rules table."""

    tables: dict[str, TableSpec]
    events: list[EventRule]
    descriptions: list[DescriptionRule] = field(default_factory=list)
    fixed_descriptions: dict[str, str] = field(default_factory=dict)


def template_columns(template: str) -> list[str]:
    """Column names referenced by ``{col}`` placeholders, in order."""
    return _PLACEHOLDER.findall(template)


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
    descriptions = [DescriptionRule(**d) for d in raw.get("descriptions", [])]
    return MimicRules(tables, events, descriptions, dict(raw.get("fixed_descriptions", {})))


def template_column(template: str, unknown: tuple[str, ...] = (), fallback: str = UNKNOWN) -> Column:
    """Spark column filling ``template`` from the row: null when a placeholder column outside ``unknown``
    is null or blank (the caller turns that into a reject); ``unknown`` columns fall back to ``fallback``."""
    from pyspark.sql import functions as F

    parts: list[Column] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(template):
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
