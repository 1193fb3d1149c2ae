"""A small stand-in token dataset shared by the training tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.standin import write_standin

from ehrfm.config.tokenize import TokenizerConfig
from ehrfm.layout import TokenPaths

STANDIN_MAX_LEN = 64
"""The row length recorded for the stand-in tokens (their rows are cut at it when collated)."""


@pytest.fixture(scope="session")
def standin_tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``vocab.json`` + ``pretrain/part-0.parquet`` with 80 subjects of up to ~70 tokens, and a
    ``tokenize.json`` recording ``max_len`` 64 (what ``ehrfm tokenize`` writes beside its rows)."""
    folder = tmp_path_factory.mktemp("tokens")
    out = Path(write_standin(folder, n_subjects=80, seed=0, n_codes=48, max_len=60))
    config = TokenizerConfig(max_len=STANDIN_MAX_LEN).to_dict()
    TokenPaths(out).meta.write_text(json.dumps({"config": config}))
    return out
