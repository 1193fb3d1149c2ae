"""EHRMamba embeddings: continuous streams must not drown the concept identity at initialisation."""

from __future__ import annotations

import torch

from ehrfm.models import ModelConfig
from ehrfm.models.embeddings import EHRMambaEmbeddings


def _embed(concepts: list[int], ages: list[float], times: list[float], seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    emb = EHRMambaEmbeddings(ModelConfig(vocab_size=50, dropout=0.0)).eval()
    c = torch.tensor([concepts])
    with torch.no_grad():
        return emb(c, torch.full_like(c, 6), torch.tensor([ages]), torch.tensor([times]))[0]


def test_concept_identity_survives_realistic_ages_and_times() -> None:
    # Two different codes for an 80-year-old in 2015 (days since 1970). Raw ages/years into Time2Vec made
    # every token ~the same vector after the LayerNorm (cosine ~0.99): heads then ranked patients by age.
    for seed in range(5):
        x = _embed([7, 8], [80.0, 80.0], [16500.0, 16500.0], seed)
        cos = torch.nn.functional.cosine_similarity(x[0], x[1], dim=0)
        assert cos < 0.6, (seed, float(cos))


def test_age_and_time_still_change_the_embedding() -> None:
    x = _embed([7, 7, 7], [40.0, 80.0, 80.0], [16500.0, 16500.0, 20000.0])
    assert not torch.allclose(x[0], x[1], atol=1e-4)
    assert not torch.allclose(x[1], x[2], atol=1e-4)
    # same code at another age stays closer to itself than to another code (identity dominates at init)
    other = _embed([8], [40.0], [16500.0])[0]
    cos = torch.nn.functional.cosine_similarity
    assert cos(x[0], x[1], dim=0) > cos(x[0], other, dim=0)
