"""Populations generated once per test session (small: the whole synth suite runs in well under a minute)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrfm.synth import SynthConfig, SynthSummary, generate

POP_SEED = 11
POP_N = 2000


@pytest.fixture(scope="session")
def population(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    """A 2,000-patient population (seed 11) and its summary."""
    out = tmp_path_factory.mktemp("synth_pop")
    summary = generate(SynthConfig(n_patients=POP_N, seed=POP_SEED, progress=False), out)
    return out, summary
