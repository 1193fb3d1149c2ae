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
from ehrfm.layout import TOKENS_META, TokenPaths


def meta_text(tokenizer: TokenizerConfig, summary: TokenizeSummary) -> str:
    """The content of ``tokenize.json`` (what :func:`write_meta` writes; ``ehrfm tokenize`` hands it to
    :meth:`ehrfm.atomic.Outputs.publish` as the completion marker)."""
    return json.dumps({"config": tokenizer.to_dict(), "summary": summary.to_dict()}, indent=1)


def write_meta(tokens_dir: str | Path, tokenizer: TokenizerConfig, summary: TokenizeSummary) -> str:
    """Write ``<tokens_dir>/tokenize.json`` (a local folder or URI); returns its path."""
    from ehrfm import storage

    if storage.is_remote(str(tokens_dir)):
        uri = storage.join(str(tokens_dir), TOKENS_META)
        storage.write_text(uri, meta_text(tokenizer, summary))
        return uri
    path = TokenPaths(Path(tokens_dir)).meta
    # temporary file + rename: readers see the old record or the new one, never half of one
    return str(write_marker(path, meta_text(tokenizer, summary)))


def read_meta(tokens_dir: str | Path) -> dict[str, Any]:
    """The parsed ``<tokens_dir>/tokenize.json`` (a local folder or URI); ``FileNotFoundError`` when the
    folder was never tokenized."""
    from ehrfm import storage

    remote = storage.is_remote(str(tokens_dir))
    path = storage.join(str(tokens_dir), TOKENS_META) if remote else TokenPaths(Path(tokens_dir)).meta
    if not (storage.is_file(str(path)) if remote else Path(path).is_file()):
        raise FileNotFoundError(f"{path}: missing (run `ehrfm tokenize`, which records the tokenizer config "
                                "and max_len of the rows there)")
    data = json.loads(storage.read_text(str(path)) if remote else Path(path).read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def read_tokenizer_config(tokens_dir: str | Path) -> TokenizerConfig:
    """The :class:`TokenizerConfig` a tokens folder was written with (``max_len`` of its rows included)."""
    data = read_meta(tokens_dir)
    config = data.get("config")
    if not isinstance(config, dict):
        raise ConfigError(f"{tokens_dir}/{TOKENS_META}: no 'config' mapping (the tokenizer config)")
    return TokenizerConfig.from_dict(config)
