"""EHRMamba embeddings: continuous streams must not drown the concept identity at initialisation."""

from __future__ import annotations

import torch

from ehrfm.models import ModelConfig
from ehrfm.models.embeddings import EHRMambaEmbeddings, code_occurrences, step_code_features, value_deltas


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


def test_time_gaps_sequence_and_step() -> None:
    from ehrfm.models.embeddings import time_gaps

    t = torch.tensor([[100.0, 100.0, 102.5, 110.0, 0.0, 0.0]])  # right padding has time 0
    torch.testing.assert_close(time_gaps(t), torch.tensor([[0.0, 0.0, 2.5, 7.5, 0.0, 0.0]]))
    torch.testing.assert_close(time_gaps(torch.tensor([102.5, 5.0]), torch.tensor([100.0, 1.0])),
                               torch.tensor([2.5, 4.0]))
    torch.testing.assert_close(time_gaps(torch.tensor([102.5])), torch.tensor([0.0]))  # first step: no gap


def test_values_move_only_their_tokens_and_nan_means_none() -> None:
    torch.manual_seed(0)
    emb = EHRMambaEmbeddings(ModelConfig(vocab_size=50, dropout=0.0)).eval()
    c = torch.tensor([[7, 8, 9]])
    streams = {"type_ids": torch.tensor([[6, 7, 6]]), "ages": torch.full((1, 3), 70.0),
               "times": torch.full((1, 3), 16500.0)}
    nan = float("nan")
    with torch.no_grad():
        none = emb(c, **streams)
        all_nan = emb(c, **streams, values=torch.tensor([[nan, nan, nan]]))
        low = emb(c, **streams, values=torch.tensor([[nan, -0.5, nan]]))
        high = emb(c, **streams, values=torch.tensor([[nan, 0.5, nan]]))
        step = emb(c[:, 1], **{k: v[:, 1] for k, v in streams.items()}, values=torch.tensor([0.5]),
                   prev_times=streams["times"][:, 0])
    torch.testing.assert_close(all_nan, none)  # NaN adds nothing (and never leaks a NaN into the sum)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low[:, [0, 2]], none[:, [0, 2]])  # embeddings are per token: no spill-over
    assert (low[0, 1] - high[0, 1]).norm() > 0.05  # a one-spread difference is visible at initialisation
    torch.testing.assert_close(step, high[:, 1])  # the recurrent path reads the value the same way


def test_length_of_stay_is_visible_through_the_gap_stream() -> None:
    # the same codes, the last at the same time, after a 1-day vs a 9-day stay: at the last token only the gap
    # differs, and it moves the embedding far more than the 8-day shift of absolute time does at the first
    # token (a week is ~0.002 on the decade scale of the time stream)
    short = _embed([7, 8, 9], [70.0] * 3, [16490.0, 16490.0, 16491.0])
    long = _embed([7, 8, 9], [70.0] * 3, [16482.0, 16482.0, 16491.0])
    assert (short[2] - long[2]).norm() > 20 * (short[0] - long[0]).norm()


def test_code_occurrences_by_hand() -> None:
    c = torch.tensor([[5, 7, 5, 5, 7, 0], [3, 3, 3, 9, 3, 9]])
    assert code_occurrences(c).tolist() == [[1, 1, 2, 3, 2, 1], [1, 2, 3, 1, 4, 2]]


def test_value_deltas_by_hand() -> None:
    nan = float("nan")
    # code 10 then its bin token (value), code 11 + value, code 10 + value, code 10 + value, a code without
    # value
    c = torch.tensor([[10, 4, 11, 4, 10, 5, 10, 6, 12, 13]])
    v = torch.tensor([[nan, 1.0, nan, 7.0, nan, 1.5, nan, 0.5, nan, nan]])
    got = value_deltas(c, v)[0].tolist()
    want = [nan, nan, nan, nan, nan, 0.5, nan, -1.0, nan, nan]
    assert [g if g == g else None for g in got] == [w if w == w else None for w in want]


def test_code_features_step_equals_sequence() -> None:
    g = torch.Generator().manual_seed(1)
    c = torch.randint(3, 12, (3, 40), generator=g)
    v = torch.randn(3, 40, generator=g).masked_fill(torch.rand(3, 40, generator=g) < 0.5, float("nan"))
    occ, delta = code_occurrences(c), value_deltas(c, v)
    state: dict[str, torch.Tensor] = {}
    for t in range(40):
        o_t, d_t = step_code_features(c[:, t], v[:, t], state, vocab_size=12)
        assert torch.equal(o_t, occ[:, t])
        torch.testing.assert_close(d_t, delta[:, t], equal_nan=True)
    assert torch.isfinite(delta).any() and (occ > 1).any()  # the random rows exercise both features


def test_code_features_change_only_repeated_codes_and_later_values() -> None:
    torch.manual_seed(0)
    emb = EHRMambaEmbeddings(ModelConfig(vocab_size=50, dropout=0.0, use_code_counts=True,
                                         use_value_deltas=True)).eval()
    nan = float("nan")
    a = torch.tensor([[10, 20, 10, 4, 10, 4]])
    va = torch.tensor([[nan, nan, nan, 1.0, nan, 2.0]])
    vb = torch.tensor([[nan, nan, nan, 1.0, nan, 1.0]])
    with torch.no_grad():
        xa, xb = emb(a, values=va)[0], emb(a, values=vb)[0]
        first = emb(torch.tensor([[10, 20, 11, 4, 12, 4]]), values=va)[0]
    # same value at position 5 but a different delta (+1 vs 0): only position 5's input differs
    assert torch.allclose(xa[:5], xb[:5]) and not torch.allclose(xa[5], xb[5])
    # the second occurrence of concept 10 differs from a first occurrence of it
    assert not torch.allclose(xa[2], xa[0])
    assert torch.allclose(first[0], xa[0]) and torch.allclose(first[1], xa[1])
