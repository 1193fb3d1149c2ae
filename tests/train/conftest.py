"""A small stand-in token dataset shared by the training tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrfm.data.standin import write_standin


@pytest.fixture(scope="session")
def standin_tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``vocab.json`` + ``pretrain/part-0.parquet`` with 80 subjects of up to ~70 tokens."""
    return write_standin(tmp_path_factory.mktemp("tokens"), n_subjects=80, seed=0, n_codes=48, max_len=60)
