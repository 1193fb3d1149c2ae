"""``tokens/tokenize.json``: the record of how a tokens folder was written (a light module: it imports only
the standard library and ehrfm.config / ehrfm.layout).

Format::

    {"config": {<TokenizerConfig fields: max_len, visit_gap_hours, ...>},
     "summary": {<TokenizeSummary fields: tasks, pretrain, n_rows, rows, seconds>}}

``config`` is the one source of truth of the rows' ``max_len`` (and of the other tokenizer rules): training
and serving read it with :func:`read_tokenizer_config` instead of having their own default.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ehrfm.atomic import write_marker
from ehrfm.config.base import ConfigError
from ehrfm.config.tokenize import TokenizerConfig, TokenizeSummary
from ehrfm.layout import TokenPaths


def write_meta(tokens_dir: str | Path, tokenizer: TokenizerConfig, summary: TokenizeSummary) -> Path:
    """Write ``<tokens_dir>/tokenize.json``; returns its path."""
    path = TokenPaths(Path(tokens_dir)).meta
    # temporary file + rename: readers see the old record or the new one, never half of one
    return write_marker(path, json.dumps({"config": tokenizer.to_dict(), "summary": summary.to_dict()},
                                         indent=1))


def read_meta(tokens_dir: str | Path) -> dict[str, Any]:
    """The parsed ``<tokens_dir>/tokenize.json``; ``FileNotFoundError`` when the folder was never
    tokenized."""
    path = TokenPaths(Path(tokens_dir)).meta
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (run `ehrfm tokenize`, which records the tokenizer config "
                                "and max_len of the rows there)")
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_tokenizer_config(tokens_dir: str | Path) -> TokenizerConfig:
    """The :class:`TokenizerConfig` a tokens folder was written with (``max_len`` of its rows included)."""
    data = read_meta(tokens_dir)
    config = data.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"{TokenPaths(Path(tokens_dir)).meta}: no 'config' mapping (the tokenizer config)")
    return TokenizerConfig.from_dict(config)
