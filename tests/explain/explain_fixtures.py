"""Builders of the explanation tests: synthetic patients' MEDS events (the one-patient FHIR path), their task
rows, and tiny randomly initialised finetuned models of every backbone."""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch

from ehrfm.config.tokenize import TokenizerConfig
from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.models import EHRFoundationModel
from ehrfm.models.config import ModelConfig, load_preset
from ehrfm.prepare.bins import Bins
from ehrfm.schema import TIME
from ehrfm.synth import SynthConfig, simulate
from ehrfm.synth.fhir import medication_lines, patient_lines
from ehrfm.tokenize import tokenize_for_prediction
from ehrfm.train.heads import HeadSpec, TaskHeads
from ehrfm.train.predict import FinetunedModel

SPECS = (HeadSpec("readmission_30d", "binary"), HeadSpec("death_1y_tte", "tte"),
         HeadSpec("next_visit_codes", "forecast"))
MAX_LEN = 96
TOKENIZE = TokenizerConfig(max_len=MAX_LEN)


def patient_events(i: int, seed: int = 3) -> pd.DataFrame:
    """MEDS events of synthetic patient ``i`` (FHIR resources through the one-patient ingest)."""
    rec = simulate(SynthConfig(seed=seed), i)
    text = "\n".join(medication_lines() + [ln for lines in patient_lines(rec).values() for ln in lines])
    events: pd.DataFrame = bundle_to_events(text, validate="none",
                                            source_file=f"patient-{rec.id}.ndjson").events_df()
    return events


def finetuned(vocab: Any, backbone: str, seed: int = 0, d_model: int = 32) -> FinetunedModel:
    """A tiny randomly initialised finetuned model (every embedding stream on, as in the presets)."""
    torch.manual_seed(seed)
    fields = {**load_preset("tiny"), "d_model": d_model, "n_layers": 2, "backbone": backbone,
              "vocab_size": len(vocab), "dropout": 0.0, "d_state": 8, "headdim": 16, "chunk_size": 16,
              "cpu_chunk_size": 16, "max_len": MAX_LEN}
    model = EHRFoundationModel(ModelConfig.from_dict(fields)).eval()
    heads = TaskHeads(list(SPECS), d_model, dropout=0.0).eval()
    with torch.no_grad():  # heads of a trained size: random N(0, 1) rows, so outputs move with the input
        for p in heads.parameters():
            p.normal_(0.0, 1.0)
    return FinetunedModel(model, heads, vocab, list(SPECS), f"tiny_{backbone}", topk=5)


def task_rows(events: list[pd.DataFrame], vocab: Any, bins: Bins, task: str) -> list[dict[str, Any]]:
    """One task row per patient, cut at its 30th timed event (inclusive)."""
    rows = []
    for ev in events:
        pt = ev[TIME].dropna().sort_values().iloc[29]
        rows.append(tokenize_for_prediction(ev, vocab, bins, TOKENIZE, pt, [task])[0])
    return rows
