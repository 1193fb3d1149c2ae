"""The simulated clock reads time exactly as the tokenizer writes it: interval-token ranges invert the
tokenizer's ``interval_token``; within-visit gaps are fitted per (visit class known so far, code) with
back-off; conditioned draws land after prediction time; value-bin tokens get the mean fitted value."""

from __future__ import annotations

import numpy as np
import torch

from ehrfm.schema import INTERVAL_TOKENS, TokenType
from ehrfm.simulate.clock import StreamTables, bin_index, interval_ranges, interval_table, visit_classes
from ehrfm.tokenize.tokenizer import interval_token
from ehrfm.vocab import Vocabulary

INP, AMB = "ENCOUNTER//INPATIENT//START", "ENCOUNTER//AMBULATORY//START"
LAB, DX = "LAB//L", "DIAGNOSIS//D"
VOCAB = Vocabulary.build([*INTERVAL_TOKENS, "[Q0]", "[Q1]", INP, AMB, LAB, DX])
T = {"[CLS]": TokenType.SPECIAL, "[VS]": TokenType.VISIT_START, "[VE]": TokenType.VISIT_END,
     "[REG]": TokenType.REGISTER, "[Q0]": TokenType.VALUE_BIN, "[Q1]": TokenType.VALUE_BIN,
     **{t: TokenType.INTERVAL for t in INTERVAL_TOKENS}}


def _row(tokens: list[tuple[str, float, float]]) -> dict[str, np.ndarray]:
    """(token, time in days, value) triples -> a token row."""
    return {"concept_ids": np.array([VOCAB.id(t) for t, _, _ in tokens]),
            "type_ids": np.array([T.get(t, TokenType.CODE) for t, _, _ in tokens]),
            "times": np.array([d for _, d, _ in tokens]), "values": np.array([v for _, _, v in tokens])}


NAN = float("nan")


def test_interval_ranges_invert_the_tokenizer() -> None:
    ranges = interval_ranges()
    assert set(ranges) == set(INTERVAL_TOKENS)
    rng = np.random.default_rng(0)
    gaps = np.concatenate([rng.uniform(0, 800, 5000), np.arange(0, 400, 0.5)])
    for g in gaps:
        lo, hi = ranges[interval_token(float(g))]
        assert lo <= g and (g < hi or interval_token(float(g)) == "[LT]"), (g, lo, hi)
    # every range is reachable and the ranges tile [0, 365) without overlap
    finite = sorted((lo, hi) for t, (lo, hi) in ranges.items() if t != "[LT]")
    assert finite[0][0] == 0 and finite[-1][1] == 365
    assert all(a[1] == b[0] for a, b in zip(finite, finite[1:], strict=False))
    table = interval_table(VOCAB)
    assert table[VOCAB.id("[M0]")].tolist() == [28.0, 30.0] and bool(table[VOCAB.id(LAB)].isnan().all())


def test_gaps_are_keyed_by_the_visit_class_known_so_far() -> None:
    # inpatient: the lab comes 2 days after the previous token once START was seen; ambulatory: 0.01 days.
    # The lab before START in the inpatient visit is keyed by class none, and the first code after [VS]
    # (always at the visit's time) is never a sample.
    inpatient = [("[VS]", 0, NAN), (DX, 0, NAN), (INP, 0, NAN), (LAB, 2, NAN), ("[Q0]", 2, 1.0),
                 (LAB, 4, NAN), ("[Q1]", 4, 3.0), ("[VE]", 4, NAN), ("[REG]", 4, NAN)]
    ambulatory = [("[VS]", 10, NAN), (AMB, 10, NAN), (LAB, 10.01, NAN), ("[Q0]", 10.01, 2.0),
                  ("[VE]", 10.01, NAN)]
    early = [("[VS]", 20, NAN), (DX, 20, NAN), (LAB, 20.5, NAN), (INP, 20.5, NAN)]
    rows = [_row([("[CLS]", 0, NAN)] + inpatient + [("[W1]", 10, NAN)] + ambulatory)] * 3 + [_row(early)] * 3
    tables = StreamTables.fit(rows, VOCAB, n_quantiles=4, min_count=3)
    cls, names = visit_classes(VOCAB)
    inp, amb = names.index("INPATIENT"), names.index("AMBULATORY")
    assert int(cls[VOCAB.id(INP)]) == inp and int(cls[VOCAB.id(LAB)]) == 0
    lab = VOCAB.id(LAB)
    assert tables.gap_quantiles[inp, lab].tolist() == [2.0] * 4
    assert torch.allclose(tables.gap_quantiles[amb, lab], torch.full((4,), 0.01))
    assert tables.gap_quantiles[0, lab].tolist() == [0.5] * 4  # before START: class none
    # DX is only ever the first code of its visit (no samples): it backs off to its visit class's gaps
    assert tables.fitted_tokens == 3 * 4 + 3 * 2
    assert tables.gap_quantiles[inp, VOCAB.id(DX)].tolist() == [2.0] * 4
    assert torch.allclose(tables.gap_quantiles[amb, VOCAB.id(DX)], torch.full((4,), 0.01))
    # value on a bin token: the mean per (code before it, bin)
    bins = bin_index(VOCAB)
    assert int(bins[VOCAB.id("[Q1]")]) == 1 and int(bins[VOCAB.id(LAB)]) == -1
    assert tables.bin_values[lab].tolist() == [1.5, 3.0]
    v = tables.bin_value(torch.tensor([lab, lab]), torch.tensor([0, -1]))
    assert v[0].item() == 1.5 and bool(v[1].isnan())


def test_back_off_to_the_code_and_conditioned_draws() -> None:
    # 3 samples per class, min_count 4: each (class, LAB) pair backs off to LAB over all classes
    rows = [_row([("[VS]", 0, NAN), (INP, 0, NAN), (LAB, 1, NAN)]),
            _row([("[VS]", 0, NAN), (AMB, 0, NAN), (LAB, 3, NAN)])] * 3
    tables = StreamTables.fit(rows, VOCAB, n_quantiles=2, min_count=4)
    lab = VOCAB.id(LAB)
    assert tables.gap_quantiles[:, lab].tolist() == [[1.0, 3.0]] * 3
    n = 4000
    g = torch.Generator().manual_seed(0)
    cls = torch.ones(n, dtype=torch.long)
    free = tables.sample_gap(cls, torch.full((n,), lab), g)
    assert set(free.tolist()) == {1.0, 3.0} and abs(float(free.mean()) - 2.0) < 0.1
    # conditioned on a gap above 1.5 days: only the upper quantile; above everything: the bound itself
    above = tables.sample_gap(cls, torch.full((n,), lab), g, torch.full((n,), 1.5, dtype=torch.float64))
    assert set(above.tolist()) == {3.0}
    beyond = tables.sample_gap(cls, torch.full((n,), lab), g, torch.full((n,), 5.0, dtype=torch.float64))
    assert set(beyond.tolist()) == {5.0}
