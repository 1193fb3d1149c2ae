"""The one config machinery: typed dataclasses built from plain mappings (YAML/JSON), checked field by field.

A config class is a ``@dataclass`` that inherits :class:`ConfigBase`; each field carries a docstring right
below it (the CLI shows it) and ``__post_init__`` validates values with :func:`require`. ``from_dict`` builds
nested sections recursively and names the dotted key of any unknown or ill-typed value; ``to_dict`` /
``from_dict`` round-trip exactly (tuples become lists in YAML and back).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T", bound="ConfigBase")


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type, or out of range; the message names the dotted key."""


def require(ok: bool, key: str, value: object, why: str) -> None:
    """Raise :class:`ConfigError` ``"<key>=<value>: <why>"`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}={value!r}: {why}")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` checked against (and gently coerced to) the annotation ``hint``; errors name ``key``."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"{key}={value!r}: must be one of {list(typing.get_args(hint))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors: list[str] = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}={value!r}: not allowed")
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return value
        return build(typing.cast(Any, hint), value, key + ".")
    if origin in (list, tuple, Sequence):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}={value!r}: expected a list")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        items = [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}={value!r}: expected a mapping")
        args = typing.get_args(hint)
        if len(args) == 2:
            return {_coerce(f"{key}.<key>", k, args[0]): _coerce(f"{key}.{k}", v, args[1])
                    for k, v in value.items()}
        return dict(value)
    if hint is float and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        except ValueError:
            pass
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r}: expected true/false")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}={value!r}: expected an integer")
    if hint is str and isinstance(value, Path):
        return str(value)
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ConfigError(f"{key}={value!r}: expected {hint.__name__}")
    return value


def build(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """An instance of the config dataclass ``cls`` from a plain mapping (missing keys take defaults)."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: expected a mapping, got {data!r}")
    data = {k: v for k, v in data.items() if k != "__path__"}  # jsonargparse's record of a section's file
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(typing.cast(Any, cls)) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid: {[prefix + n for n in fields]}"
        )
    for name, value in data.items():
        # a partial section keeps the other values of this field's default (which may differ from the
        # section class's own defaults, e.g. a stage's optimizer learning rate)
        default = _field_default(fields[name])
        if isinstance(value, Mapping) and dataclasses.is_dataclass(default):
            data[name] = merge(typing.cast(dict[str, Any], _plain(default)), value)
    kwargs = {name: _coerce(prefix + name, value, hints[name]) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without a value
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from exc
    except ConfigError as exc:  # a section's own check: name the field by its full dotted key
        message = str(exc)
        if prefix and not message.startswith(prefix):
            raise ConfigError(prefix + message) from None
        raise


def _field_default(f: dataclasses.Field[Any]) -> Any:
    """A field's default value (calling its factory), or None when it has none."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _plain(value: Any) -> Any:
    """JSON/YAML-safe form: dataclasses to dicts, tuples to lists, paths to strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def read_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML or JSON file (chosen by suffix) that must hold a mapping; an empty file is ``{}``."""
    path = Path(path)
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return data


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> nested ``{"a": {"b": 1}, "c": "x"}`` with YAML-typed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r}: expected key=value with a dotted key, e.g. "
                              "trainer.max_steps=100")
        merge(out, _nest(key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return out


def _nest(dotted: str, value: Any) -> dict[str, Any]:
    node: Any = value
    for part in reversed(dotted.split(".")):
        node = {part: node}
    return typing.cast(dict[str, Any], node)


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` into ``base`` in place (mappings merge, everything else replaces); returns
    ``base``."""
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            merge(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value
    return base


class ConfigBase:
    """Mixin for config dataclasses: dict/YAML round trip, overrides, files."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of every field (what is saved, logged and printed)."""
        return typing.cast(dict[str, Any], _plain(self))

    @classmethod
    def from_dict(cls: type[T], data: Mapping[str, Any] | None) -> T:
        """Build and validate from a plain mapping; unknown or ill-typed keys raise :class:`ConfigError`."""
        return build(cls, data)

    def replace(self: T, **changes: Any) -> T:
        """A validated copy with ``changes`` (dotted keys allowed: ``replace(**{"trainer.max_steps":
        5})``)."""
        data = self.to_dict()
        for key, value in changes.items():
            merge(data, _nest(key, _plain(value)))
        return type(self).from_dict(data)

    def to_yaml(self) -> str:
        """YAML text of :meth:`to_dict` in field order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        path.write_text(self.to_yaml() if path.suffix in (".yaml", ".yml")
                        else json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls: type[T], path: str | Path, overrides: Sequence[str] = ()) -> T:
        """Read a file written by :meth:`save` (or by hand), apply ``key=value`` overrides, validate."""
        return cls.from_dict(merge(read_mapping(path), parse_overrides(overrides)))
