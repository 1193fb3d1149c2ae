"""The batched future sampler against closed forms: a stub model with a fixed next-token distribution makes
each task's outcome a race between tokens whose probability is known exactly; estimates from thousands of
futures must land within a few Monte-Carlo standard errors of it. Also: rows batched with different
distributions keep their own (cache compaction), a seed reproduces the draws, the prefix the model sees is
the task row without its prompt tokens, and a real tiny model runs on every backbone."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ehrfm.labels import load_task
from ehrfm.models import EHRFoundationModel, ModelConfig
from ehrfm.schema import INTERVAL_TOKENS, task_token
from ehrfm.simulate import OutcomeRule, Settings, StreamTables, TokenInfo, simulate_rows, strip_prompt
from ehrfm.simulate.estimate import binary_columns, tte_columns
from ehrfm.simulate.futures import POSITIVE, TRUNCATED, FutureOutcomes, prefill_rows
from ehrfm.train.generate import prefill, sample_tokens
from ehrfm.vocab import Vocabulary

from .stubs import DAY0, FixedModel, as_model, distribution, prefix_batch

START, END, DEATH = "ENCOUNTER//INPATIENT//START", "ENCOUNTER//INPATIENT//END", "MEDS_DEATH"
MARK_A, MARK_B, CODE = "LAB//MARK_A", "LAB//MARK_B", "LAB//C"
VOCAB = Vocabulary.build([*INTERVAL_TOKENS, task_token("readmission_30d"), START, END, DEATH, MARK_A, MARK_B,
                          CODE])
INFO = TokenInfo.from_vocab(VOCAB)
ZERO_GAPS = StreamTables.fit([], VOCAB)  # no within-visit time: codes never move the clock
# closed visits (discharge) and open ones (24 h into a stay), each carrying a mode marker
CLOSED = [("[CLS]", 400.0), ("[VS]", 5.0), (START, 5.0), (MARK_A, 4.0), (END, 0.0), ("[VE]", 0.0),
          ("[REG]", 0.0)]
OPEN = [("[CLS]", 400.0), ("[VS]", 1.0), (START, 1.0), (MARK_A, 0.5), (CODE, 0.0)]


def _run(table: torch.Tensor, rows: list[list[tuple[str, float]]], task: str, m: int, seed: int = 0,
         tables: StreamTables = ZERO_GAPS, max_steps: int = 400, top_p: float = 1.0) -> FutureOutcomes:
    model = FixedModel(table, [VOCAB.id(MARK_A), VOCAB.id(MARK_B)])
    batch = prefix_batch(VOCAB, rows)
    rule = OutcomeRule.from_spec(load_task(task), VOCAB)
    pred = torch.full((len(rows),), DAY0, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    return simulate_rows(as_model(model), batch, pred, rule, INFO, tables, Settings(m, top_p=top_p,
                                                                                  max_steps=max_steps), gen)


def _close(share: float, p: float, n: int, z: float = 4.0) -> None:
    se = math.sqrt(p * (1 - p) / n)
    assert abs(share - p) <= z * se + 1e-9, f"share {share:.4f} vs closed form {p:.4f} (n={n}, se={se:.4f})"


def test_readmission_is_a_race_against_the_clock() -> None:
    # per step: START (s), death (d), [W3] (w: 21-28 days), a timeless code (c). One [W3] keeps the clock
    # inside 30 days, a second passes it; death first is a negative. P = s/q * (1 + w/q), q = s + d + w.
    s, d, w, c = 0.1, 0.05, 0.3, 0.55
    table = distribution(VOCAB, {START: s, DEATH: d, "[W3]": w, CODE: c}).unsqueeze(0)
    out = _run(table, [CLOSED, CLOSED], "readmission_30d", m=3000)
    q = s + d + w
    share = float((out.outcome == POSITIVE).float().mean())
    _close(share, s / q * (1 + w / q), 6000)
    assert not bool((out.outcome == TRUNCATED).any())


def test_rows_keep_their_own_distribution_through_compaction() -> None:
    # row 0 (mode A) readmits often, row 1 (mode B) rarely; they share batches and compactions
    ta = distribution(VOCAB, {START: 0.5, "[M1]": 0.5})
    tb = distribution(VOCAB, {START: 0.05, "[M1]": 0.95})
    rows = [CLOSED, [(t if t != MARK_A else MARK_B, b) for t, b in CLOSED], CLOSED]
    out = _run(torch.stack([ta, tb]), rows, "readmission_30d", m=2000)
    share = (out.outcome == POSITIVE).float().mean(1)
    for i, p in enumerate([0.5, 0.05, 0.5]):
        _close(float(share[i]), p, 2000)


def test_in_hospital_death_until_the_visit_closes() -> None:
    # open index visit: death (d) vs [VE] (v); timeless codes in between. P = d / (d + v)
    table = distribution(VOCAB, {DEATH: 0.02, "[VE]": 0.08, CODE: 0.9}).unsqueeze(0)
    out = _run(table, [OPEN], "mortality_inhospital", m=5000)
    _close(float((out.outcome == POSITIVE).float().mean()), 0.2, 5000)
    # a row whose last visit is already closed has an empty window: negative without generating
    closed = _run(table, [CLOSED], "mortality_inhospital", m=50)
    assert not bool((closed.outcome == POSITIVE).any()) and int(closed.steps.sum()) == 0


def test_length_of_stay_reads_the_within_visit_clock() -> None:
    # each generated code takes exactly one day (fitted gap table); admission was 1 day before prediction
    # time, so the stay passes 7 days after 7 codes: P = (c / (c + v))^7
    row = {"concept_ids": np.array([VOCAB.id(t) for t in ("[CLS]", "[VS]", START, CODE, CODE)]),
           "type_ids": np.array([1, 2, 6, 6, 6]), "times": np.array([0.0, 0.0, 0.0, 1.0, 2.0]),
           "values": np.full(5, np.nan)}
    one_day = StreamTables.fit([row], VOCAB, min_count=1)
    c, v = 0.9, 0.1
    table = distribution(VOCAB, {CODE: c, "[VE]": v}).unsqueeze(0)
    rows = [[("[CLS]", 400.0), ("[VS]", 1.0), (START, 1.0), (MARK_A, 0.0)]]
    out = _run(table, rows, "los_gt_7d", m=5000, tables=one_day)
    _close(float((out.outcome == POSITIVE).float().mean()), (c / (c + v)) ** 7, 5000)


def test_time_to_event_risk_and_survival() -> None:
    # death (d) vs [M12] (360-365 days): one [M12] stays inside the year, a second leaves it; a death drawn
    # first happens at day 0, after one [M12] at day 360+
    d, m12 = 0.3, 0.7
    table = distribution(VOCAB, {DEATH: d, "[M12]": m12}).unsqueeze(0)
    out = _run(table, [CLOSED], "death_1y_tte", m=4000)
    cols = tte_columns(out, 365.0)
    _close(cols["risk"][0], d + m12 * d, 4000)
    surv = cols["survival"][0]
    assert cols["times_days"][0][-1] == 365.0 and all(a >= b for a, b in zip(surv, surv[1:], strict=False))
    _close(1.0 - surv[0], d, 4000)  # by day 30: only the immediate deaths


def test_max_steps_truncates_and_is_counted() -> None:
    table = distribution(VOCAB, {CODE: 1.0}).unsqueeze(0)  # nothing ever happens
    out = _run(table, [CLOSED], "readmission_30d", m=16, max_steps=25)
    assert bool((out.outcome == TRUNCATED).all()) and bool((out.steps == 25).all())
    neg = binary_columns(out, "negative")
    excl = binary_columns(out, "exclude")
    assert neg["prob"] == [0.0] and neg["n_truncated"] == [16] and neg["n_futures"] == [16]
    assert excl["n_futures"] == [0] and excl["prob"] == [0.5] and excl["prob_ci_low"] == [0.0]


def test_seed_reproduces_and_top_p_cuts_the_tail() -> None:
    table = distribution(VOCAB, {START: 0.1, "[M1]": 0.3, CODE: 0.6}).unsqueeze(0)
    a = _run(table, [CLOSED], "readmission_30d", m=200, seed=7)
    b = _run(table, [CLOSED], "readmission_30d", m=200, seed=7)
    c = _run(table, [CLOSED], "readmission_30d", m=200, seed=8)
    assert torch.equal(a.outcome, b.outcome) and torch.equal(a.steps, b.steps)
    assert not torch.equal(a.steps, c.steps)
    # top_p 0.8 keeps CODE and [M1] (0.6 + 0.3 reaches it): START is never drawn
    cut = _run(table, [CLOSED], "readmission_30d", m=200, top_p=0.8)
    assert not bool((cut.outcome == POSITIVE).any())


def test_the_model_sees_the_row_without_its_prompt_tokens() -> None:
    task = "readmission_30d"
    row = [(task_token(task), 400.0), *CLOSED[1:], (task_token(task), 0.0)]
    batch = strip_prompt(prefix_batch(VOCAB, [row]), VOCAB, task, [17])
    assert batch["lengths"].tolist() == [len(row) - 1]
    stub = FixedModel(distribution(VOCAB, {"[M1]": 1.0}).unsqueeze(0), [])
    rule = OutcomeRule.from_spec(load_task(task), VOCAB)
    simulate_rows(as_model(stub), batch, torch.tensor([DAY0], dtype=torch.float64), rule, INFO, ZERO_GAPS,
                  Settings(4))
    seen = [VOCAB.token(int(s[0])) for s in stub.inputs[: len(row) - 1]]
    assert seen == ["[CLS]", *[t for t, _ in CLOSED[1:]]]  # no prompt token, nothing after the cut
    assert VOCAB.id(task_token(task)) not in torch.cat(stub.inputs).tolist()
    with pytest.raises(ValueError, match=r"record subject_id=17: field concept_ids"):
        strip_prompt(prefix_batch(VOCAB, [CLOSED]), VOCAB, task, [17])


@pytest.mark.parametrize("backbone", ["mamba", "mamba2", "mamba3", "transformer"])
def test_a_real_model_simulates_on_every_backbone(backbone: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(VOCAB), backbone=backbone, d_model=32, n_layers=1, headdim=16,
                      chunk_size=8, cpu_chunk_size=8, max_len=32, dropout=0.0, use_code_counts=True,
                      use_value_deltas=True)
    model = EHRFoundationModel(cfg).eval()
    rows = [CLOSED] if backbone == "transformer" else [CLOSED, OPEN[:3], CLOSED[:4]]
    batch = prefix_batch(VOCAB, rows)
    rule = OutcomeRule.from_spec(load_task("readmission_30d"), VOCAB)
    out = simulate_rows(model, batch, torch.full((len(rows),), DAY0, dtype=torch.float64), rule, INFO,
                        ZERO_GAPS, Settings(6, max_steps=40), torch.Generator().manual_seed(0))
    assert out.outcome.shape == (len(rows), 6) and bool((out.steps >= 1).all())
    if backbone == "transformer":  # the KV cache holds max_len tokens: prefix + generated
        assert int(out.steps.max()) <= 32 - len(CLOSED)


@pytest.mark.parametrize("backbone", ["mamba", "mamba2", "mamba3"])
def test_prefill_on_cache_views_equals_the_reference_prefill(backbone: str) -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(VOCAB), backbone=backbone, d_model=32, n_layers=2, headdim=16,
                      chunk_size=8, cpu_chunk_size=8, max_len=32, dropout=0.0, use_code_counts=True,
                      use_value_deltas=True)
    model = EHRFoundationModel(cfg).eval()
    batch = prefix_batch(VOCAB, [OPEN[:3], CLOSED, OPEN, CLOSED[:2], OPEN])  # ragged, unsorted
    batch["values"][:, 3] = 0.7  # a value on some tokens: the per-code value tables are state too
    ref_cache, ref_logits = prefill(model, batch)
    cache, logits = prefill_rows(model, batch)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=1e-5)
    for ours, ref in zip(cache.layers, ref_cache.layers, strict=True):
        for f in dataclasses.fields(ref):
            torch.testing.assert_close(getattr(ours, f.name), getattr(ref, f.name), atol=1e-5, rtol=1e-5)
    assert set(cache.extra) == set(ref_cache.extra)
    for name, ref in ref_cache.extra.items():
        torch.testing.assert_close(cache.extra[name], ref, equal_nan=True)


def test_sample_tokens_draws_the_tempered_distribution() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.0, 0.3, 0.2, 0.0]])).expand(20000, 5)
    g = torch.Generator().manual_seed(0)
    freq = torch.bincount(sample_tokens(logits, generator=g), minlength=5).float() / 20000
    assert freq[1] == 0 and freq[4] == 0  # probability 0 is never drawn
    for got, p in zip(freq.tolist(), [0.5, 0.0, 0.3, 0.2, 0.0], strict=True):
        _close(got, p, 20000)
    banned = torch.tensor([True, False, False, False, False])
    draws = sample_tokens(logits, temperature=0.5, generator=g, banned=banned)
    freq = torch.bincount(draws, minlength=5) / 20000
    _close(float(freq[2]), 0.09 / 0.13, 20000)  # (p^2 renormalised over the allowed tokens)
    assert freq[0] == 0
