"""A tiny, randomly initialised serving folder, for tests and benchmarks (test-only: not part of ehrfm).

Its predictions are meaningless (no training): it exercises the full serving path (FHIR ingest ->
tokenizer -> backbone -> heads -> RiskAssessment) with the real save format of ``ehrfm finetune``.
Vocabulary and bins are fitted on the given events, as ``ehrfm prepare`` would on a train split.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from ehrfm.config.serve import ServeConfig
from ehrfm.models import EHRFoundationModel
from ehrfm.models.config import ModelConfig, load_preset
from ehrfm.prepare.bins import fit_bins_pandas
from ehrfm.prepare.vocab import build_vocab
from ehrfm.schema import CODE, SUBJECT_ID, TRAIN_SPLIT
from ehrfm.serve.core import BINS_JSON, build_serving_dir
from ehrfm.train.heads import HeadSpec, TaskHeads
from ehrfm.train.predict import FinetunedModel

DEFAULT_SPECS = (HeadSpec("readmission_30d", "binary"), HeadSpec("death_1y_tte", "tte"),
                 HeadSpec("next_visit_codes", "forecast"))


def tiny_finetuned(events: pd.DataFrame, output: str | Path, specs: Sequence[HeadSpec] = DEFAULT_SPECS,
                   seed: int = 0, d_model: int = 32, n_layers: int = 1, backbone: str = "mamba") -> Path:
    """Write a finetuned-model folder (``FinetunedModel.save`` format) plus ``bins.json`` to ``output``.

    ``events``: EVENTS_SCHEMA columns of any subjects (all treated as train).
    """
    torch.manual_seed(seed)
    splits = pd.DataFrame({SUBJECT_ID: events[SUBJECT_ID].unique(), "split": TRAIN_SPLIT})
    counts = {str(k): int(v) for k, v in events[CODE].value_counts().items()}
    tasks = [s.task for s in specs]
    vocab = build_vocab(counts, min_count=1, n_bins=10, tasks=tasks)
    bins = fit_bins_pandas(events, splits, n_bins=10, min_count=5)
    fields = {**load_preset("tiny"), "d_model": d_model, "n_layers": n_layers, "backbone": backbone,
              "vocab_size": len(vocab), "dropout": 0.0}
    model = EHRFoundationModel(ModelConfig.from_dict(fields)).eval()
    heads = TaskHeads(list(specs), d_model, dropout=0.0).eval()
    out = FinetunedModel(model, heads, vocab, list(specs), "ehrfm_tiny", topk=5).save(output)
    bins.save(out / BINS_JSON)
    return out


def tiny_serving_dir(events: pd.DataFrame, output: str | Path, config: ServeConfig | None = None,
                     **kwargs: object) -> Path:
    """:func:`tiny_finetuned` then :func:`build_serving_dir` into ``<output>/serving``."""
    ft = tiny_finetuned(events, Path(output) / "finetuned", **kwargs)  # type: ignore[arg-type]
    return build_serving_dir(ft, Path(output) / "serving", config=config)
