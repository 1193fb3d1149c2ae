"""Model configuration for existing users: :class:`ModelConfig` lives in :mod:`ehrfm.config.model` (a light
module); this one adds the helpers that read a vocabulary file.

Presets are ``ehrfm/presets/model/<name>.yaml`` (or ``$EHRFM_CONFIG_DIR/model``, see :mod:`ehrfm.resources`);
a preset never carries ``vocab_size``: :func:`from_vocab` reads it from the vocabulary file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ehrfm.config.base import ConfigError, read_mapping
from ehrfm.config.model import BACKBONES, ModelConfig
from ehrfm.resources import preset_path
from ehrfm.vocab import Vocabulary

__all__ = ["BACKBONES", "ModelConfig", "from_vocab", "load_preset"]


def load_preset(preset: str | Path) -> dict[str, Any]:
    """Fields of a model preset: a packaged name (``tiny``, ``small``) or a YAML file path."""
    return read_mapping(preset_path("model", preset))


def from_vocab(vocab_path: str | Path, preset: str | Path = "tiny", **overrides: Any) -> ModelConfig:
    """A config whose ``vocab_size`` is read from ``vocab.json``; ``overrides`` replace preset fields.

    ``max_len`` stays as the preset/overrides give it (0 = from the tokens, see :meth:`ModelConfig.resolve`).
    """
    data = load_preset(preset)
    if "vocab_size" in data or "vocab_size" in overrides:
        raise ConfigError("vocab_size comes from the vocabulary file; remove it from the preset/overrides")
    data.update(overrides)
    data["vocab_size"] = len(Vocabulary.load(vocab_path))
    return ModelConfig.from_dict(data)
