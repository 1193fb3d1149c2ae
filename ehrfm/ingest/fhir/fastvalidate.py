"""A fast structural pre-check of FHIR resources, compiled from the ``fhir.resources`` models themselves.

The full models (:func:`ehrfm.ingest.fhir.validate.validate_resource_reference`) build a pydantic model for
every complex element (~11 per Synthea resource) and run fhir_core's Python validators on each; that is
most of the serving time. This module walks the parsed JSON once instead, with a per-model table compiled
from the models' own fields (alias, list or single, primitive / element / resource, required, choice
groups), and validates every primitive value with a ``pydantic.TypeAdapter`` of the field's own annotation
(the same pydantic-core schema the model uses, so the same regexes, date parsing and lax coercions),
remembering primitive values already found valid.

It answers only :data:`VALID` or :data:`UNSURE`, never "invalid": anything it does not prove valid (an
unknown key, a null, a primitive extension ``_x``, ``fhir_comments``, a value that fails its type, a
missing required element, two values of one choice, an empty list, a contained resource of an unknown
type, ...) is handed to the full models, which then decide and word the reason. So a rejection is always
the reference's rejection, message included; the only way the two could differ is a resource this walk
calls valid and the models reject, and ``tests/ingest/test_fhir_validate_fast.py`` checks on real
resources and a corpus of mutations of them that this does not happen.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Any

VALID, UNSURE = True, False
_MEMO_MAX = 500_000  # primitive values remembered as valid (all adapters together) before the memo restarts
_PRIM, _ELEMENT, _RESOURCE = 0, 1, 2


@dataclass
class _Field:
    """One element of a model: how its JSON value is checked."""

    kind: int  # _PRIM | _ELEMENT | _RESOURCE
    many: bool  # a JSON array
    adapter: Any = None  # _PRIM: TypeAdapter of one item (Optional[...] as declared)
    memo: set[Any] = field(default_factory=set)  # _PRIM: item values (or (type, value)) already valid
    model: Any = None  # _ELEMENT: the model class
    prefix: str = ""  # _RESOURCE: fhir_core's FHIR_TYPES_MAPS prefix of the model family


@dataclass
class _Spec:
    """The compiled table of one model class."""

    resource_type: str
    fields: dict[str, _Field]  # by JSON name (alias)
    required: tuple[str, ...]  # aliases that must be present (required elements, required primitives)
    choices: tuple[tuple[tuple[str, ...], bool], ...]  # (aliases of one choice, one of them required)


_SPECS: dict[Any, _Spec] = {}
_memo_size = 0


def _fhir_base(annotation: Any) -> Any:
    """The fhir_core ``FhirBase`` subclass inside a (possibly Optional/List) annotation, else None."""
    from fhir_core.types import FhirBase

    if isinstance(annotation, type) and issubclass(annotation, FhirBase):
        return annotation
    for arg in typing.get_args(annotation):
        found = _fhir_base(arg)
        if found is not None:
            return found
    return None


def _item_annotation(annotation: Any) -> Any:
    """``Optional[List[X]]`` -> ``X`` (the annotation of one item of a list field)."""
    for arg in typing.get_args(annotation):
        if typing.get_origin(arg) in (list, typing.List):  # noqa: UP006 - as the models spell it
            return typing.get_args(arg)[0]
    raise TypeError(f"not a list annotation: {annotation!r}")


def _compile(model: Any) -> _Spec:
    """Build the table of ``model`` from its pydantic fields and fhir_core's declarations."""
    from fhir_core.types import FhirElementOrResourceBase
    from fhir_core.utils import is_list_type, is_primitive_type
    from pydantic import TypeAdapter

    fields: dict[str, _Field] = {}
    required: list[str] = []
    name_to_alias: dict[str, str] = {}
    for name, info in model.model_fields.items():
        alias = info.alias or name
        name_to_alias[name] = alias
        # primitive extensions (_x), fhir_comments: rare, and left to the models (not in the table)
        if name.endswith("__ext") or name == "fhir_comments" or alias.startswith("_"):
            continue
        many = is_list_type(info)
        if is_primitive_type(info):
            item = _item_annotation(info.annotation) if many else info.annotation
            fields[alias] = _Field(_PRIM, many, adapter=TypeAdapter(item))
        else:
            base = _fhir_base(info.annotation)
            if base is None:
                continue  # an annotation this walk does not understand: the key stays unknown (UNSURE)
            if issubclass(base, FhirElementOrResourceBase):
                if base.get_model_klass().__name__ != "Resource":
                    continue
                fields[alias] = _Field(_RESOURCE, many, prefix=base._prefix)
            else:
                fields[alias] = _Field(_ELEMENT, many, model=base.get_model_klass())
        if info.is_required():
            required.append(alias)
    probe = model.model_construct()  # the declarations are instance methods returning constants
    for name, _ext in probe.get_required_fields():
        required.append(name_to_alias.get(name, name))
    choices = []
    for group in probe.get_one_of_many_fields().values():
        extra = model.model_fields[group[0]].json_schema_extra or {}
        choices.append((tuple(name_to_alias[g] for g in group), extra.get("one_of_many_required") is True))
    return _Spec(model.__resource_type__, fields, tuple(dict.fromkeys(required)), tuple(choices))


def _spec(model: Any) -> _Spec:
    spec = _SPECS.get(model)
    if spec is None:
        spec = _SPECS[model] = _compile(model)
    return spec


def _primitive(f: _Field, value: Any) -> bool:
    """One primitive value (not None) against its field's own pydantic type; valid values remembered."""
    global _memo_size
    key: Any = value if type(value) is str else (type(value), value)  # 1 == True == 1.0: keep apart
    try:
        if key in f.memo:
            return True
    except TypeError:  # unhashable (a list or object where a primitive belongs): the adapter decides
        key = None
    try:
        f.adapter.validate_python(value)
    except Exception:  # pydantic.ValidationError, or a fhir_core validator's own error
        return False
    if key is not None:
        if _memo_size >= _MEMO_MAX:
            for s in _SPECS.values():
                for g in s.fields.values():
                    g.memo.clear()
            _memo_size = 0
        f.memo.add(key)
        _memo_size += 1
    return True


def _resource_model(f: _Field, value: dict[str, Any]) -> Any:
    """The model a contained resource validates with (as fhir_core picks it), None when not a Resource."""
    from fhir_core.constraints import FHIR_TYPES_MAPS
    from pydantic._internal._validators import import_string

    rtype = value.get("resourceType")
    path = FHIR_TYPES_MAPS.get(f"{f.prefix}{rtype}Type") if isinstance(rtype, str) else None
    if path is None:
        return None
    model = import_string(path)
    concrete = model.has_resource_base() and model.__name__ not in ("Resource", "DomainResource")
    return model if concrete else None


def _element(model: Any, data: Any, top: bool) -> bool:
    """True when ``data`` is proved valid for ``model``; ``top``: a resource, ``resourceType`` expected."""
    if type(data) is not dict:
        return False
    spec = _spec(model)
    fields = spec.fields
    for key, value in data.items():
        f = fields.get(key)
        if f is None:
            # a resource's own type name is popped by the model and compared with its type
            if key == "resourceType" and top and value == spec.resource_type:
                continue
            return False
        items: list[Any] | tuple[Any]
        if f.many:
            if type(value) is not list or not value:
                return False
            items = value
        else:
            items = (value,)
        kind = f.kind
        for item in items:
            if item is None:  # a null (value or list item): the models decide what it means
                return False
            if kind == _PRIM:
                if not _primitive(f, item):
                    return False
            elif kind == _ELEMENT:
                if not _element(f.model, item, False):
                    return False
            else:
                sub = _resource_model(f, item) if type(item) is dict else None
                if sub is None or not _element(sub, item, True):
                    return False
    for alias in spec.required:
        if alias not in data:
            return False
    for group, needed in spec.choices:
        present = sum(1 for a in group if a in data)
        if present > 1 or (needed and present == 0):
            return False
    return True


def check(model: Any, resource: dict[str, Any]) -> bool:
    """:data:`VALID` when ``resource`` (parsed JSON, its ``resourceType`` that of ``model``) is proved valid
    for the ``fhir.resources`` model class ``model``; :data:`UNSURE` otherwise (then ask the model)."""
    try:
        return _element(model, resource, True)
    except RecursionError:  # a hostile nesting depth: the full models decide
        return UNSURE


def forget() -> None:
    """Drop the remembered primitive values (the compiled tables stay): a cold start for benchmarks."""
    global _memo_size
    for spec in _SPECS.values():
        for f in spec.fields.values():
            f.memo.clear()
    _memo_size = 0


def mismatches(model: Any, data: Any, limit: int = 1 << 30) -> int:
    """How many elements of ``data`` (parsed JSON of a resource of ``model``'s type) do not fit the *shape*
    of ``model``: a key the model does not have, an object where a primitive belongs (or the reverse), a
    list where one value belongs (or the reverse), a contained resource of a type the model family lacks.
    A misfit is counted once, its content not walked; primitive values are not checked (that is the
    validator's job), nor are ``_x`` primitive extensions and ``fhir_comments`` (the same in every version).

    :mod:`ehrfm.ingest.fhir.versions` compares this count across the STU3 / R4B / R5 models to tell which
    FHIR version a resource is written in. Stops counting past ``limit`` (the caller's best so far)."""
    try:
        return _misfits(model, data, True, limit)
    except RecursionError:  # a hostile nesting depth: no version fits better than another
        return limit + 1


def _misfits(model: Any, data: Any, top: bool, limit: int) -> int:
    if type(data) is not dict:
        return 1
    spec = _spec(model)
    fields = spec.fields
    n = 0
    for key, value in data.items():
        if n > limit:
            break
        f = fields.get(key)
        if f is None:
            if key.startswith("_") or key == "fhir_comments" or (top and key == "resourceType"):
                continue
            n += 1
            continue
        if f.many != (type(value) is list):
            n += 1
            continue
        for item in value if f.many else (value,):
            if item is None:
                continue  # a null fits nothing and everything: the models decide
            if f.kind == _PRIM:
                n += type(item) in (dict, list)
            elif f.kind == _ELEMENT:
                n += _misfits(f.model, item, False, limit - n)
            else:
                sub = _resource_model(f, item) if type(item) is dict else None
                n += 1 if sub is None else _misfits(sub, item, True, limit - n)
    return n
