"""Typed model configuration: validated on construction, round-trips through YAML/JSON, saved beside weights.

Presets live as YAML in ``configs/model/<name>.yaml`` (repo root, or ``$EHRFM_CONFIG_DIR/model``); a preset
never carries ``vocab_size``: :func:`from_vocab` reads it from the vocabulary file, which is never refitted.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from ehrfm.schema import PAD_ID, TokenType
from ehrfm.vocab import Vocabulary

BACKBONES = ("mamba", "mamba2", "transformer")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model (shapes, not training settings).

    Fields shared by all backbones come first; ``d_state/d_conv/expand/dt_rank`` are Mamba's,
    ``headdim/chunk_size/ngroups`` Mamba-2's, ``n_heads/mlp_ratio`` the transformer's.
    """

    vocab_size: int
    backbone: str = "mamba"
    d_model: int = 64
    n_layers: int = 2
    dropout: float = 0.1
    max_len: int = 2048  # longest sequence the data pipeline feeds; the transformer's RoPE/KV-cache size
    type_vocab_size: int = TokenType.COUNT
    max_visit_orders: int = 512  # visit orders beyond this share the last embedding row
    visit_segment_size: int = 3  # 0 outside visits, 1/2 alternating
    pad_id: int = PAD_ID
    tie_embeddings: bool = True
    use_age: bool = True
    use_time: bool = True
    use_time_gap: bool = True  # a third Time2Vec on log1p(days since the previous token)
    use_values: bool = True  # a Time2Vec on the exact (scaled) numeric value carried by value-bin tokens
    # Off by default so configs saved before these inputs existed rebuild the same model; the presets turn them on.
    use_code_counts: bool = False  # an embedding of how often the token's concept has occurred so far in the row
    max_code_count: int = 16  # occurrence counts above this share the last embedding row
    use_value_deltas: bool = False  # a Time2Vec on the change from the same code's previous value in the row
    norm_eps: float = 1e-5
    initializer_range: float = 0.02
    # Mamba-1 / Mamba-2
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    dt_rank: int = 0  # 0 = ceil(d_model / 16) as in Mamba
    # Mamba-2
    headdim: int = 32
    chunk_size: int = 64
    ngroups: int = 1
    # transformer
    n_heads: int = 4
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: {why}")

        if self.backbone not in BACKBONES:
            raise bad("backbone", f"must be one of {BACKBONES}")
        for name in ("vocab_size", "d_model", "n_layers", "max_len", "type_vocab_size", "max_visit_orders",
                     "visit_segment_size", "d_state", "d_conv", "expand", "headdim", "chunk_size", "ngroups",
                     "n_heads", "mlp_ratio", "max_code_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "must be a positive integer")
        if self.dt_rank < 0:
            raise bad("dt_rank", "must be >= 0 (0 = ceil(d_model/16))")
        if not 0.0 <= self.dropout < 1.0:
            raise bad("dropout", "must be in [0, 1)")
        if not 0 <= self.pad_id < self.vocab_size:
            raise bad("pad_id", f"must be a token id in [0, vocab_size={self.vocab_size})")
        if self.type_vocab_size < TokenType.COUNT:
            raise bad("type_vocab_size", f"must be >= TokenType.COUNT={TokenType.COUNT}")
        if self.backbone == "mamba2":
            if self.d_inner % self.headdim:
                raise bad("headdim", f"must divide d_inner = expand*d_model = {self.d_inner}")
            if self.n_ssm_heads % self.ngroups:
                raise bad("ngroups", f"must divide the number of heads {self.n_ssm_heads}")
        if self.backbone == "transformer":
            if self.d_model % self.n_heads:
                raise bad("n_heads", f"must divide d_model={self.d_model}")
            if (self.d_model // self.n_heads) % 2:
                raise bad("n_heads", "d_model/n_heads must be even for rotary embeddings")

    # --- derived sizes -----------------------------------------------------------------------------
    @property
    def d_inner(self) -> int:
        """Inner width of the Mamba blocks."""
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        """Low-rank width of Mamba-1's dt projection."""
        return self.dt_rank or math.ceil(self.d_model / 16)

    @property
    def n_ssm_heads(self) -> int:
        """Number of Mamba-2 heads."""
        return self.d_inner // self.headdim

    # --- (de)serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a dict; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write YAML (``.yaml``/``.yml``) or JSON (anything else)."""
        path = Path(path)
        text = yaml.safe_dump(self.to_dict(), sort_keys=False) if path.suffix in (".yaml", ".yml") else (
            json.dumps(self.to_dict(), indent=2))
        path.write_text(text)

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        """Read a file written by :meth:`save`."""
        return cls.from_dict(_read_mapping(Path(path)))


def _read_mapping(path: Path) -> dict[str, Any]:
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields, got {type(data).__name__}")
    return data


def config_dir() -> Path:
    """Folder holding ``model/`` and ``pretrain/`` YAML presets (``$EHRFM_CONFIG_DIR`` or ``<repo>/configs``)."""
    env = os.environ.get("EHRFM_CONFIG_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "configs"


def load_preset(preset: str | Path) -> dict[str, Any]:
    """Fields of a preset: a name (``tiny``, ``small``) under ``configs/model`` or a YAML file path."""
    path = Path(preset)
    if not path.suffix:
        path = config_dir() / "model" / f"{preset}.yaml"
    if not path.exists():
        avail = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
        raise FileNotFoundError(f"model preset {str(preset)!r} not found at {path} (available: {avail})")
    return _read_mapping(path)


def from_vocab(vocab_path: str | Path, preset: str | Path = "tiny", **overrides: Any) -> ModelConfig:
    """A config whose ``vocab_size`` is read from ``vocab.json``; ``overrides`` replace preset fields."""
    data = load_preset(preset)
    if "vocab_size" in data or "vocab_size" in overrides:
        raise ValueError("vocab_size comes from the vocabulary file; remove it from the preset/overrides")
    data.update(overrides)
    data["vocab_size"] = len(Vocabulary.load(vocab_path))
    return ModelConfig.from_dict(data)
