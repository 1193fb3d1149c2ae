"""Read ``tasks/*.yaml`` into :class:`~ehrfm.labels.spec.TaskSpec` with errors that name task and field."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ehrfm import resources
from ehrfm.labels.spec import (
    KINDS,
    REQUIREMENTS,
    CensoringSpec,
    CodePattern,
    ExclusionSpec,
    IndexSpec,
    OutcomeSpec,
    TaskSpec,
    TaskSpecError,
    codes_matching,
    parse_duration,
)

_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_TOP = {"name", "kind", "description", "index", "prediction_time", "outcome", "exclusions", "censoring"}
_INDEX = {"codes", "require"}
_OUTCOME = {"codes", "within", "until", "grace", "other_encounter", "same_encounter", "encounter_duration_gt",
            "at",
            "next_encounter", "allow_empty"}
_EXCL = {"death_during_encounter", "min_history"}
_CENS = {"followup", "death"}


def _section(raw: Mapping[str, Any], key: str, allowed: set[str], where: str) -> dict[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        raise TaskSpecError(f"{where}: {key}: must be a mapping, got {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise TaskSpecError(f"{where}: {key}.{unknown[0]}: unknown field (allowed: "
                            f"{', '.join(sorted(allowed))})")
    return dict(value)


def _patterns(value: Any, where: str) -> tuple[CodePattern, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v for v in items):
        raise TaskSpecError(f"{where}: must be a code pattern or a list of them, got {value!r}")
    out = tuple(CodePattern(v) for v in items)
    for p in out:
        try:
            re.compile(p.regex)
        except re.error as e:
            raise TaskSpecError(f"{where}: bad regex {p.text!r}: {e}") from e
    return out


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise TaskSpecError(f"{where}: must be true or false, got {value!r}")
    return value


def parse_spec(raw: Mapping[str, Any], source: str = "<spec>") -> TaskSpec:
    """Validate one YAML mapping and build the :class:`TaskSpec`; ``source`` names the file in errors."""
    if not isinstance(raw, Mapping):
        raise TaskSpecError(f"{source}: a task spec must be a mapping")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise TaskSpecError(f"{source}: name: missing or not snake_case ({name!r})")
    w = f"task {name!r}"
    unknown = sorted(set(raw) - _TOP)
    if unknown:
        raise TaskSpecError(f"{w}: {unknown[0]}: unknown field (allowed: {', '.join(sorted(_TOP))})")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise TaskSpecError(f"{w}: kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    idx = _section(raw, "index", _INDEX, w)
    if "codes" not in idx:
        raise TaskSpecError(f"{w}: index.codes: required")
    require = idx.get("require") or []
    if isinstance(require, str):
        require = [require]
    bad = [r for r in require if r not in REQUIREMENTS]
    if bad:
        raise TaskSpecError(f"{w}: index.require: unknown condition {bad[0]!r} (allowed: "
                            f"{', '.join(REQUIREMENTS)})")
    index = IndexSpec(codes=_patterns(idx["codes"], f"{w}: index.codes"), require=tuple(require))
    if "prediction_time" not in raw:
        raise TaskSpecError(f"{w}: prediction_time: required (offset from the index event, e.g. 0h or +24h)")
    offset = parse_duration(raw["prediction_time"], f"{w}: prediction_time")
    outcome = _parse_outcome(_section(raw, "outcome", _OUTCOME, w), kind, w)
    ex = _section(raw, "exclusions", _EXCL, w)
    dde = ex.get("death_during_encounter")
    exclusions = ExclusionSpec(
        death_during_encounter=None if dde in (None, False) else parse_duration(
            "0h" if dde is True else dde, f"{w}: exclusions.death_during_encounter"),
        min_history=parse_duration(ex.get("min_history", "0d"), f"{w}: exclusions.min_history"),
    )
    ce = _section(raw, "censoring", _CENS, w)
    censoring = CensoringSpec(followup=str(ce.get("followup", "record_end")),
                              death=str(ce.get("death", "negative")))
    if censoring.followup not in ("record_end", "none"):
        raise TaskSpecError(
            f"{w}: censoring.followup: must be record_end or none, got {censoring.followup!r}")
    if censoring.death not in ("negative", "exclude"):
        raise TaskSpecError(f"{w}: censoring.death: must be negative or exclude, got {censoring.death!r}")
    return TaskSpec(name=name, kind=kind, index=index, prediction_offset=offset, outcome=outcome,
                    exclusions=exclusions, censoring=censoring,
                    description=str(raw.get("description", "")).strip())


def _parse_outcome(o: dict[str, Any], kind: str, w: str) -> OutcomeSpec:
    codes = _patterns(o["codes"], f"{w}: outcome.codes") if "codes" in o else ()
    within = parse_duration(o["within"], f"{w}: outcome.within") if "within" in o else None
    until = o.get("until")
    if until not in (None, "encounter_end"):
        raise TaskSpecError(f"{w}: outcome.until: only 'encounter_end' is supported, got {until!r}")
    los = o.get("encounter_duration_gt")
    at = o.get("at")
    if at not in (None, "next_encounter"):
        raise TaskSpecError(f"{w}: outcome.at: only 'next_encounter' is supported, got {at!r}")
    out = OutcomeSpec(
        codes=codes, within=within, until=until,
        grace=parse_duration(o.get("grace", "0h"), f"{w}: outcome.grace"),
        other_encounter=_bool(o.get("other_encounter", False), f"{w}: outcome.other_encounter"),
        same_encounter=_bool(o.get("same_encounter", False), f"{w}: outcome.same_encounter"),
        encounter_duration_gt=None if los is None else parse_duration(los, f"{w}: "
                                                                      "outcome.encounter_duration_gt"),
        at=at,
        next_encounter=_patterns(o.get("next_encounter", "regex:ENCOUNTER//[^/]+//START"),
                                 f"{w}: outcome.next_encounter") if at else (),
        allow_empty=_bool(o.get("allow_empty", False), f"{w}: outcome.allow_empty"),
    )
    if kind == "forecast":
        if at != "next_encounter" or not codes:
            raise TaskSpecError(f"{w}: outcome: a forecast needs 'at: next_encounter' and 'codes'")
    elif out.encounter_duration_gt is not None:
        if kind != "binary" or codes or within or until:
            raise TaskSpecError(f"{w}: outcome.encounter_duration_gt: only for binary tasks, alone")
    else:
        if not codes:
            raise TaskSpecError(f"{w}: outcome.codes: required")
        if (within is None) == (until is None):
            raise TaskSpecError(f"{w}: outcome: give exactly one of 'within' (e.g. 30d) or 'until: "
                                "encounter_end'")
        if within is not None and within <= pd.Timedelta(0):
            raise TaskSpecError(f"{w}: outcome.within: must be positive")
        if at:
            raise TaskSpecError(f"{w}: outcome.at: only for forecast tasks")
    return out


def _folder(tasks_dir: str | Path | None) -> Path:
    """``tasks_dir`` or, when None, the packaged task specifications."""
    return Path(tasks_dir) if tasks_dir is not None else resources.tasks_dir()


def available_tasks(tasks_dir: str | Path | None = None) -> list[str]:
    """Task names (file stems) in ``tasks_dir`` (default: the packaged task specs), sorted."""
    return sorted(p.stem for p in _folder(tasks_dir).glob("*.yaml"))


def load_task(name: str, tasks_dir: str | Path | None = None) -> TaskSpec:
    """Load ``<tasks_dir>/<name>.yaml``; an unknown name raises ``KeyError`` listing the known tasks."""
    folder = _folder(tasks_dir)
    path = folder / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(available_tasks(folder)) or "(none)"
        raise KeyError(f"unknown task {name!r} in {folder} (known: {known})")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TaskSpecError(f"{path}: not valid YAML: {e}") from e
    spec = parse_spec(raw, source=str(path))
    if spec.name != name:
        raise TaskSpecError(f"{path}: name: {spec.name!r} does not match the file name {name!r}")
    return spec


def load_tasks(names: str | Iterable[str], tasks_dir: str | Path | None = None) -> list[TaskSpec]:
    """``"all"``, ``"a,b"`` or a list of names -> specs (in the order given)."""
    if isinstance(names, str):
        names = (available_tasks(tasks_dir) if names.strip() == "all"
                 else [n.strip() for n in names.split(",")])
    return [load_task(n, tasks_dir) for n in names if n]


def warn_missing_codes(specs: Iterable[TaskSpec], codes: Iterable[str]) -> list[str]:
    """Warn (and return the messages) for every pattern that matches none of ``codes`` (the dataset's codes)."""
    series = pd.Series(sorted(set(codes)), dtype="string")
    msgs = []
    for spec in specs:
        for fld, p in spec.pattern_fields():
            if not codes_matching(series, (p,)).any():
                msgs.append(f"task {spec.name!r}: {fld}: pattern {p.text!r} matches no code in the data")
    for m in msgs:
        warnings.warn(m, stacklevel=2)
    return msgs
