"""Explanation fixtures: a few synthetic patients' MEDS events (the one-patient FHIR path) and the vocabulary
and value bins fitted on them (builders of models and rows: explain_fixtures.py)."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest
from explain_fixtures import SPECS, patient_events

from ehrfm.prepare.bins import Bins, fit_bins_pandas
from ehrfm.prepare.vocab import build_vocab
from ehrfm.schema import CODE, SUBJECT_ID, TIME, TRAIN_SPLIT


@pytest.fixture(scope="session")
def events() -> list[pd.DataFrame]:
    """Events of six synthetic patients with at least 40 timed events each."""
    out: list[pd.DataFrame] = []
    i = 0
    while len(out) < 6:
        ev = patient_events(i)
        if ev[TIME].notna().sum() >= 40:
            out.append(ev)
        i += 1
    return out


@pytest.fixture(scope="session")
def vocab_bins(events: list[pd.DataFrame]) -> tuple[Any, Bins]:
    """Vocabulary and value bins fitted on the patients' events (all treated as train)."""
    allev = pd.concat(events, ignore_index=True)
    splits = pd.DataFrame({SUBJECT_ID: allev[SUBJECT_ID].unique(), "split": TRAIN_SPLIT})
    counts = {str(k): int(v) for k, v in allev[CODE].value_counts().items()}
    vocab = build_vocab(counts, min_count=1, n_bins=10, tasks=[s.task for s in SPECS])
    return vocab, fit_bins_pandas(allev, splits, n_bins=10, min_count=3)


