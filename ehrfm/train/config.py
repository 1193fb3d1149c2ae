"""Pretraining configuration: typed dataclasses loaded from YAML, with ``--set key=value`` overrides.

Overrides use dotted keys (``trainer.max_steps=500``, ``model.backbone=mamba2``); values are parsed as
YAML scalars and checked against the field's type; an unknown key is an error that lists the valid ones.
``model`` holds ``preset`` plus any :class:`ehrfm.models.ModelConfig` field (validated when built).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ehrfm.models.config import ModelConfig


@dataclass
class DataConfig:
    """Batching: token budget per micro-batch after padding, truncation length, split names."""

    max_len: int = 512
    max_tokens: int = 4096
    pool_size: int = 1024
    num_workers: int = 0
    train_split: str = "train"
    val_split: str = "tuning"


@dataclass
class OptimConfig:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    warmup_steps: int = 20
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0


@dataclass
class LossConfig:
    """Which targets the next-token loss ignores besides [PAD] (always excluded)."""

    exclude_special: bool = False  # [CLS] [VS] [VE] [REG] [UNK] [MASK]
    exclude_interval: bool = False  # [W*] [M*] [LT]


@dataclass
class TrainerConfig:
    """Lightning Trainer settings; ``precision: auto`` = bf16-mixed on GPU, 32 on CPU."""

    max_steps: int = 300
    accumulate_grad_batches: int = 1
    val_check_interval: int = 100
    limit_val_batches: float = 1.0
    checkpoint_every_n_steps: int = 100
    accelerator: str = "auto"
    devices: Any = "auto"
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "auto"
    log_every_n_steps: int = 10
    progress_bar: bool = True


@dataclass
class TrackingConfig:
    """MLflow settings (store defaults to ``<output>/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` is set)."""

    enabled: bool = True
    experiment: str = "ehrfm-pretrain"
    tracking_uri: str | None = None
    run_name: str | None = None


@dataclass
class PretrainConfig:
    """Everything ``ehrfm pretrain`` needs besides the data and output paths."""

    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def __post_init__(self) -> None:
        known = {f.name for f in fields(ModelConfig)} | {"preset"}
        unknown = sorted(set(self.model) - known)
        if unknown:
            raise ValueError(f"model: unknown key(s) {unknown}; valid: preset and ModelConfig fields {sorted(known)}")
        if "vocab_size" in self.model:
            raise ValueError("model.vocab_size comes from the vocabulary file; remove it")
        for name, value, low in (("trainer.max_steps", self.trainer.max_steps, 1),
                                 ("trainer.accumulate_grad_batches", self.trainer.accumulate_grad_batches, 1),
                                 ("trainer.checkpoint_every_n_steps", self.trainer.checkpoint_every_n_steps, 1),
                                 ("trainer.val_check_interval", self.trainer.val_check_interval, 1),
                                 ("data.max_tokens", self.data.max_tokens, 8), ("data.max_len", self.data.max_len, 1),
                                 ("optim.warmup_steps", self.optim.warmup_steps, 0)):
            if value < low:
                raise ValueError(f"{name}={value}: must be >= {low}")
        if self.optim.lr <= 0:
            raise ValueError(f"optim.lr={self.optim.lr}: must be > 0")

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (what gets saved and logged)."""
        return dataclasses.asdict(self)


def _check_type(key: str, value: Any, hint: Any) -> Any:
    """Coerce ``value`` to the annotated type or raise an error naming ``key``."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        errors = []
        for arg in typing.get_args(hint):
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg)
            except ValueError as exc:
                errors.append(str(exc))
        raise ValueError(errors[0])
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{key}={value!r}: expected a list")
        (item,) = typing.get_args(hint)
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}={value!r}: expected a mapping")
        return value
    if hint is float and isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return float(value)  # YAML reads 1e-3 as a string
        except ValueError:
            pass
    if hint is bool and not isinstance(value, bool):
        raise ValueError(f"{key}={value!r}: expected true/false")
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{key}={value!r}: expected an integer")
    if isinstance(hint, type) and not isinstance(value, hint):
        raise ValueError(f"{key}={value!r}: expected {hint.__name__}")
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ValueError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"unknown config key(s) {[prefix + k for k in unknown]}; valid: {[prefix + n for n in names]}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(typing.cast(type, hint), value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(prefix + name, value, hint)
    return cls(**kwargs)


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}`` with YAML-typed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set {item!r}: expected key=value with a dotted key, e.g. trainer.max_steps=100")
        out[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _apply(data: dict[str, Any], overrides: dict[str, Any]) -> None:
    for key, value in overrides.items():
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"--set {key}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value


def load_pretrain_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Read the YAML at ``path`` (defaults when None), apply ``--set`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a YAML mapping")
        data = loaded
    _apply(data, parse_set(overrides))
    return typing.cast(PretrainConfig, _build(PretrainConfig, data))


def build_model_config(cfg: PretrainConfig, vocab_path: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` of ``cfg.model`` (preset + overrides) with the vocabulary's size."""
    from ehrfm.models.config import from_vocab

    fields_ = dict(cfg.model)
    preset = fields_.pop("preset", "tiny")
    return from_vocab(vocab_path, preset, **fields_)
