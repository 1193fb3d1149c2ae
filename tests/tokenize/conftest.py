"""Fixtures for the tokenizer tests: a small vocabulary and bins (helpers live in tok_helpers.py)."""

from __future__ import annotations

import os
import sys

import pytest

# Spark's Python workers must use this interpreter (the venv), not whatever `python3` is on PATH.
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

from tok_helpers import CODES  # noqa: E402

from ehrfm.prepare.bins import Bins  # noqa: E402
from ehrfm.prepare.vocab import build_vocab  # noqa: E402
from ehrfm.vocab import Vocabulary  # noqa: E402


@pytest.fixture()
def vocab() -> Vocabulary:
    """Every test code kept, n_bins=4, tasks t1 and t2."""
    return build_vocab({c: 10 for c in CODES}, min_count=1, n_bins=4, tasks=["t1", "t2"])


@pytest.fixture()
def bins() -> Bins:
    """LAB//A cut at 2, 4, 6 → bins 0..3."""
    return Bins(n_bins=4, edges={"LAB//A": [2.0, 4.0, 6.0]})
