"""Load the FHIR mapping rules (``rules.yaml`` beside this module) and answer lookups from them.

All FHIR-specific knowledge that is data rather than logic lives in the YAML: code-system short names,
per-resource time/code fields, Observation category prefixes, Encounter class mapping, STU3 markers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

_NON_ALNUM = re.compile(r"[^a-z0-9]")


@dataclass(frozen=True)
class ResourceRule:
    """How one resource type maps: which handler, code prefix, code and time field paths."""

    handler: str
    prefix: str | None = None
    code: tuple[str, ...] = ()
    time: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    end: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rules:
    """The parsed rules table (see ``rules.yaml`` for the meaning of every field)."""

    code_systems: dict[str, str]
    system_preference: dict[str, tuple[str, ...]]
    observation_categories: dict[str, str]
    resources: dict[str, ResourceRule]
    subject_fields: tuple[str, ...]
    encounter_fields: tuple[str, ...]
    void_statuses: frozenset[str]
    encounter_classes: dict[str, str]
    encounter_keywords: tuple[tuple[str, str], ...]
    encounter_default_class: str
    gender: dict[str, str]
    race_extension: str
    ethnicity_extension: str
    birth_time_extension: str
    stu3_profile_markers: tuple[str, ...]
    stu3_fields: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def system_name(self, system: str | None) -> str:
        """Short name of a code-system URL: the table's entry, else the upper-cased last path segment.

        ``None``/empty -> ``UNKNOWN``; ``http://example.org/fhir/CodeSystem/custom-lab`` -> ``CUSTOM-LAB``.
        """
        if not system:
            return "UNKNOWN"
        known = self.code_systems.get(system) or self.code_systems.get(system.rstrip("/"))
        if known:
            return known
        tail = re.split(r"[/:]", system.rstrip("/"))[-1]
        return tail.upper() or "UNKNOWN"

    def encounter_class(self, text: str | None) -> str | None:
        """CLASS for a class code, bare string or display by exact (normalised) lookup, else ``None``."""
        if not text:
            return None
        return self.encounter_classes.get(_NON_ALNUM.sub("", text.lower()))

    def encounter_keyword_class(self, text: str | None) -> str | None:
        """CLASS from the first keyword found inside free text (type / serviceType displays), else
        ``None``."""
        if not text:
            return None
        low = text.lower()
        for keyword, klass in self.encounter_keywords:
            if keyword in low:
                return klass
        return None


def _tuple(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    return tuple(str(x) for x in (v if isinstance(v, list) else [v]))


def parse_rules(data: dict[str, Any]) -> Rules:
    """Build :class:`Rules` from the YAML mapping; raises ``ValueError`` naming a bad entry."""
    res: dict[str, ResourceRule] = {}
    for rtype, spec in (data.get("resources") or {}).items():
        if "handler" not in spec:
            raise ValueError(f"rules: resources.{rtype} needs a 'handler'")
        res[rtype] = ResourceRule(
            handler=str(spec["handler"]),
            prefix=spec.get("prefix"),
            code=_tuple(spec.get("code")),
            time=_tuple(spec.get("time")),
            start=_tuple(spec.get("start")),
            end=_tuple(spec.get("end")),
        )
    classes = {_NON_ALNUM.sub("", str(k).lower()): str(v)
               for k, v in (data.get("encounter_classes") or {}).items()}
    keywords = tuple((str(k).lower(), str(v)) for k, v in (data.get("encounter_keywords") or []))
    return Rules(
        code_systems={str(k): str(v) for k, v in (data.get("code_systems") or {}).items()},
        system_preference={k: _tuple(v) for k, v in (data.get("system_preference") or {}).items()},
        observation_categories={str(k).lower(): str(v)
                                for k, v in (data.get("observation_categories") or {}).items()},
        resources=res,
        subject_fields=_tuple(data.get("subject_fields")),
        encounter_fields=_tuple(data.get("encounter_fields")),
        void_statuses=frozenset(_tuple(data.get("void_statuses"))),
        encounter_classes=classes,
        encounter_keywords=keywords,
        encounter_default_class=str(data.get("encounter_default_class", "OTHER")),
        gender={str(k).lower(): str(v) for k, v in (data.get("gender") or {}).items()},
        race_extension=str(data["race_extension"]),
        ethnicity_extension=str(data["ethnicity_extension"]),
        birth_time_extension=str(data["birth_time_extension"]),
        stu3_profile_markers=tuple(str(x).lower() for x in data.get("stu3_profile_markers") or []),
        stu3_fields={k: _tuple(v) for k, v in (data.get("stu3_fields") or {}).items()},
    )


@lru_cache(maxsize=8)
def load_rules(path: str | None = None) -> Rules:
    """The rules table: ``path`` (a YAML file) or the packaged ``rules.yaml``. Cached per path."""
    if path is None:
        text = resources.files("ehrfm.ingest.fhir").joinpath("rules.yaml").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    return parse_rules(yaml.safe_load(text))


@lru_cache(maxsize=4096)
def compile_path(path: str) -> tuple[str | int, ...]:
    """The steps of a dotted path, compiled once: list indices as ints (``effectiveTiming.event.0`` ->
    ``("effectiveTiming", "event", 0)``). The rules hold a handful of paths, walked for every record."""
    return tuple(int(p) if p.isascii() and p.isdigit() else p for p in path.split("."))


def get_path(obj: Any, path: str) -> Any:
    """Value at a dotted ``path`` (``effectivePeriod.start``, ``effectiveTiming.event.0``) or ``None``."""
    cur = obj
    for part in compile_path(path):
        if isinstance(cur, dict):
            # an int step on a dict looks up the digit string, as the uncompiled walk did
            cur = cur.get(part if type(part) is str else str(part))
        elif type(part) is int and isinstance(cur, list):
            cur = cur[part] if part < len(cur) else None
        else:
            return None
        if cur is None:
            return None
    return cur


def first_path(obj: Any, paths: tuple[str, ...]) -> tuple[str | None, Any]:
    """``(path, value)`` of the first path in ``paths`` with a non-empty value, else ``(None, None)``."""
    for p in paths:
        # most rule paths are one top-level key of a resource: one dict lookup
        v = obj.get(p) if "." not in p and isinstance(obj, dict) else get_path(obj, p)
        # "non-empty" = not one of None, "", [], {} (JSON values: a falsy str/list/dict is one of them);
        # tested in this order, a present value costs one truth test instead of building [] and {}
        if v is not None and (v or not isinstance(v, (str, list, dict))):
            return p, v
    return None, None
