"""Populations generated once per test session (small: the whole synth suite runs in well under a minute)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrfm.synth import generate

POP_SEED = 11
POP_N = 2000


@pytest.fixture(scope="session")
def population(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A 2,000-patient population (seed 11) and its summary."""
    out = tmp_path_factory.mktemp("synth_pop")
    summary = generate(POP_N, POP_SEED, out, progress=False)
    return out, summary
