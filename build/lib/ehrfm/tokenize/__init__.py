"""Tokenize stage: per-patient timeline → EHRMamba-style token streams (TOKENS_SCHEMA).

Public API: :func:`tokenize_subject`, :func:`tokenize_for_prediction`, :class:`TokenizerConfig`, and
:func:`read_tokenizer_config` (the config, ``max_len`` included, a tokens folder was written with). The Spark
population path lives in :mod:`ehrfm.tokenize.spark_job`, the one-process one in :mod:`ehrfm.tokenize.direct`,
the stage runner in :mod:`ehrfm.tokenize.stage`.

The tokenizer functions (numpy, pandas) are imported on first use, so ``ehrfm.tokenize.meta`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ehrfm.config.tokenize import TokenizerConfig
from ehrfm.tokenize.meta import read_tokenizer_config

if TYPE_CHECKING:
    from ehrfm.tokenize.tokenizer import interval_token, tokenize_for_prediction, tokenize_subject

__all__ = ["TokenizerConfig", "interval_token", "read_tokenizer_config", "tokenize_for_prediction",
           "tokenize_subject"]

_LAZY = {"interval_token", "tokenize_for_prediction", "tokenize_subject"}


def __getattr__(name: str) -> Any:
    """The tokenizer functions, imported from :mod:`ehrfm.tokenize.tokenizer` on first access."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module("ehrfm.tokenize.tokenizer"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
