"""Integrated gradients: the completeness check holds for every backbone on the CPU reference and chunked
paths; prompt tokens and padding get nothing; the explained output is the raw head output that predictions
are made from; the check does catch a poor quadrature."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from explain_fixtures import SPECS, finetuned, task_rows

from ehrfm.config.explain import IGSettings
from ehrfm.data.multitask import MultiTaskCollator
from ehrfm.explain.ig import IntegratedGradients, fixed_positions, quadrature
from ehrfm.ops.dispatch import ops_path
from ehrfm.prepare.bins import Bins
from ehrfm.schema import TokenType
from ehrfm.train.heads import survival_curve
from ehrfm.train.predict import head_output

BACKBONES = ["mamba", "mamba2", "mamba3", "transformer"]


def _batch(rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
    return MultiTaskCollator(None)([{**r, "task_idx": 0} for r in rows])


def _last_tokens(row: dict[str, Any], n: int) -> dict[str, Any]:
    """``row`` cut to its last ``n`` tokens in every token stream."""
    streams = ("concept_ids", "type_ids", "ages", "times", "visit_orders", "visit_segments", "values")
    return {**row, **{k: row[k][-n:] for k in streams}, "length": n}


@pytest.mark.parametrize("path", ["ref", "chunked"])
@pytest.mark.parametrize("backbone", BACKBONES)
def test_completeness_for_every_backbone(backbone: str, path: str, events: list[pd.DataFrame],
                                         vocab_bins: tuple[Any, Bins]) -> None:
    vocab, bins = vocab_bins
    fm = finetuned(vocab, backbone)
    for spec in SPECS[:2]:  # binary (logit) and time-to-event (risk logit)
        batch = _batch(task_rows(events[:3], vocab, bins, spec.task))
        with ops_path(path):
            att = IntegratedGradients(fm.model, fm.heads, spec, IGSettings(steps=16)).explain(batch)
        diff = att.f_input - att.f_baseline
        assert (np.abs(diff) > 1e-3).all(), "the baseline must move the output, or the check means nothing"
        np.testing.assert_allclose(att.tokens.sum(1), diff, rtol=0.01, atol=1e-5)
        assert att.converged.all() and (att.rel_error <= 0.01).all(), att.rel_error


def test_a_coarse_quadrature_is_caught_and_refined(events: list[pd.DataFrame],
                                                   vocab_bins: tuple[Any, Bins]) -> None:
    vocab, bins = vocab_bins
    fm, spec = finetuned(vocab, "mamba2"), SPECS[0]
    batch = _batch(task_rows(events[:3], vocab, bins, spec.task))
    coarse = IGSettings(steps=1, max_steps=1, method="riemann", tolerance=1e-4)
    one = IntegratedGradients(fm.model, fm.heads, spec, coarse).explain(batch)
    assert (one.rel_error > 1e-4).any() and not one.converged.all()  # one midpoint is not the integral
    refined = IntegratedGradients(fm.model, fm.heads, spec,
                                  IGSettings(steps=1, max_steps=64, method="riemann", tolerance=1e-3)
                                  ).explain(batch)
    assert refined.steps.max() > 1 and refined.steps.max() <= 64
    assert (refined.rel_error[refined.converged] <= 1e-3).all()
    assert (refined.rel_error < one.rel_error).all()


def test_prompt_and_padding_get_zero_and_rows_do_not_interact(events: list[pd.DataFrame],
                                                              vocab_bins: tuple[Any, Bins]) -> None:
    vocab, bins = vocab_bins
    fm, spec = finetuned(vocab, "mamba"), SPECS[0]
    rows = task_rows(events[:2], vocab, bins, spec.task)
    rows[1] = _last_tokens(rows[1], 40)  # a shorter row: padded in the batch
    ig = IntegratedGradients(fm.model, fm.heads, spec, IGSettings(steps=16))
    batch = _batch(rows)
    together = ig.explain(batch)
    fixed = fixed_positions(batch).numpy()
    assert (together.tokens[fixed] == 0).all()
    assert ((batch["type_ids"] == TokenType.TASK).sum(1) >= 1).all()
    assert (np.abs(together.tokens[~fixed]) > 0).mean() > 0.9  # nearly every explained token moves f
    alone = ig.explain(_batch(rows[1:]))
    n = int(batch["lengths"][1])
    np.testing.assert_allclose(together.tokens[1, :n], alone.tokens[0, :n], rtol=1e-3, atol=1e-6)


def test_the_explained_output_is_the_raw_head_output(events: list[pd.DataFrame],
                                                     vocab_bins: tuple[Any, Bins]) -> None:
    vocab, bins = vocab_bins
    fm = finetuned(vocab, "transformer")
    binary, tte, forecast = SPECS
    batch = _batch(task_rows(events[:2], vocab, bins, binary.task))
    att = IntegratedGradients(fm.model, fm.heads, binary, IGSettings(steps=4)).explain(batch)
    np.testing.assert_allclose(att.f_input, head_output(fm, binary, batch).numpy(), rtol=1e-5, atol=1e-5)
    assert att.target == "logit"
    batch = _batch(task_rows(events[:2], vocab, bins, tte.task))
    att = IntegratedGradients(fm.model, fm.heads, tte, IGSettings(steps=4)).explain(batch)
    s_last = survival_curve(head_output(fm, tte, batch))[:, -1].double().numpy()
    np.testing.assert_allclose(att.f_input, np.log((1 - s_last) / s_last), rtol=1e-4)
    assert att.target == "risk_logit"
    with pytest.raises(ValueError, match="forecast"):
        IntegratedGradients(fm.model, fm.heads, forecast)


@pytest.mark.parametrize("method", ["gauss", "riemann", "clenshaw_curtis"])
def test_quadrature_integrates_polynomials(method: str) -> None:
    x, w = quadrature(8, method)
    assert ((x >= 0) & (x <= 1)).all() and w.sum() == pytest.approx(1.0)
    # Gauss-Legendre with 8 nodes is exact up to degree 15, Clenshaw-Curtis with 9 (n = 8) up to degree 9,
    # the midpoint rule for degree 1
    assert (w * x).sum() == pytest.approx(0.5)
    exact = (w * x**7).sum() == pytest.approx(1 / 8, rel=1e-12)
    assert exact == (method != "riemann")
    if method == "clenshaw_curtis":
        assert len(x) == 9 and x[0] == 0 and x[-1] == pytest.approx(1)
        assert (w * x**9).sum() == pytest.approx(1 / 10, rel=1e-12)
        assert (w * x**12).sum() != pytest.approx(1 / 13, rel=1e-9)
        finer = {round(float(a), 12) for a in quadrature(16, method)[0]}
        assert {round(float(a), 12) for a in x} <= finer  # nested: refining reuses every node
    with pytest.raises(ValueError, match="method"):
        quadrature(4, "simpson")


def test_nested_refinement_computes_each_node_once(events: list[pd.DataFrame],
                                                    vocab_bins: tuple[Any, Bins],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Clenshaw-Curtis refinement evaluates only the new nodes, and gives what the final rule gives alone."""
    vocab, bins = vocab_bins
    fm, spec = finetuned(vocab, "mamba2"), SPECS[0]
    rows = task_rows(events[:3], vocab, bins, spec.task)
    batch = _batch(rows)
    evaluated: list[int] = []
    original = IntegratedGradients._node_contributions

    def counting(self: IntegratedGradients, sub: dict[str, torch.Tensor], x: torch.Tensor,
                 base: torch.Tensor, alphas: np.ndarray) -> np.ndarray:
        evaluated.append(len(alphas) * int(x.shape[0]))  # node evaluations x rows
        return original(self, sub, x, base, alphas)

    monkeypatch.setattr(IntegratedGradients, "_node_contributions", counting)
    refined = IntegratedGradients(fm.model, fm.heads, spec,
                                  IGSettings(steps=1, max_steps=16, method="clenshaw_curtis",
                                             tolerance=1e-6)).explain(batch)
    assert refined.steps.max() > 2, "the tolerance must force refinement, or nothing is tested"
    # row i's nodes were evaluated once each: the evaluations add up to the rows' final node counts
    assert sum(evaluated) == int(refined.steps.sum())
    for i, n_nodes in enumerate(refined.steps):
        direct = IntegratedGradients(fm.model, fm.heads, spec,
                                     IGSettings(steps=int(n_nodes) - 1, max_steps=int(n_nodes) - 1,
                                                method="clenshaw_curtis")).explain(_batch([rows[i]]))
        n = int(batch["lengths"][i])
        np.testing.assert_allclose(refined.tokens[i, :n], direct.tokens[0, :n], rtol=1e-5, atol=1e-8)


def test_other_threads_predict_untouched_while_a_row_is_explained(events: list[pd.DataFrame],
                                                                  vocab_bins: tuple[Any, Bins]) -> None:
    """A served model may predict in other threads meanwhile: the embedding tap acts in its thread only."""
    from concurrent.futures import ThreadPoolExecutor

    from ehrfm.explain.ig import _norm_input

    vocab, bins = vocab_bins
    fm, spec = finetuned(vocab, "mamba"), SPECS[0]
    batch = _batch(task_rows(events[:1], vocab, bins, spec.task))
    expected = head_output(fm, spec, batch)
    seen: list[torch.Tensor] = []
    zeros = torch.zeros(*batch["concept_ids"].shape, fm.model.config.d_model)
    with _norm_input(fm.model, zeros, seen), ThreadPoolExecutor(1) as pool:
        elsewhere = pool.submit(head_output, fm, spec, batch).result()
        here = head_output(fm, spec, batch)  # this thread's forward receives the zeros
    torch.testing.assert_close(elsewhere, expected)
    assert len(seen) == 1 and not torch.allclose(here, expected)
    torch.testing.assert_close(head_output(fm, spec, batch), expected)  # and nothing is left behind



def test_both_ends_of_the_path_are_the_model_on_the_row_and_on_its_pad_baseline(
        events: list[pd.DataFrame], vocab_bins: tuple[Any, Bins]) -> None:
    """f(x) and f(baseline) come from one stacked pass (rows and baselines together): each must equal a
    separate one-row forward of that row, and of its baseline embedding (the pad row's embedding with the
    prompt and padding positions kept from the row)."""
    from ehrfm.explain.ig import baseline_streams, embedding_sum

    vocab, bins = vocab_bins
    fm, spec = finetuned(vocab, "mamba2"), SPECS[0]
    rows = task_rows(events[:3], vocab, bins, spec.task)
    rows[1] = _last_tokens(rows[1], 40)  # a shorter row: padded in the batch
    batch = _batch(rows)
    ig = IntegratedGradients(fm.model, fm.heads, spec, IGSettings(steps=4))
    att = ig.explain(batch)
    for j in range(len(rows)):
        one = {k: v[j : j + 1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        streams = {k: one[k] for k in baseline_streams(one, 0)}
        x = embedding_sum(fm.model, streams)
        base = torch.where(fixed_positions(one)[..., None], x,
                           embedding_sum(fm.model, baseline_streams(one, fm.model.config.pad_id)))
        with torch.no_grad():
            f_x, f_b = (float(ig.output(streams, one["lengths"], e)[0]) for e in (x, base))
        assert f_x == pytest.approx(float(head_output(fm, spec, one)[0]), rel=1e-5, abs=1e-5)
        assert att.f_input[j] == pytest.approx(f_x, rel=1e-5, abs=1e-5)
        assert att.f_baseline[j] == pytest.approx(f_b, rel=1e-5, abs=1e-5)
    assert not np.allclose(att.f_input, att.f_baseline)  # the two ends differ: the test can tell them apart


def test_parameters_need_no_grad_while_explaining_and_get_their_flags_back(
        events: list[pd.DataFrame], vocab_bins: tuple[Any, Bins]) -> None:
    """The path gradients are taken with the parameters frozen (no parameter gradient is built): same
    attributions as with them live, every ``requires_grad`` flag restored afterwards, also when two threads
    explain with the same model at once."""
    from concurrent.futures import ThreadPoolExecutor

    vocab, bins = vocab_bins
    fm, spec = finetuned(vocab, "mamba2"), SPECS[0]
    batch = _batch(task_rows(events[:2], vocab, bins, spec.task))
    params = list(fm.model.parameters()) + list(fm.heads.parameters())
    params[0].requires_grad_(False)  # a parameter frozen before stays frozen
    before = [q.requires_grad for q in params]
    assert any(before) and not all(before)
    live: list[bool] = []
    handle = fm.model.embeddings.norm.register_forward_hook(
        lambda *_: live.append(any(q.requires_grad for q in params)))
    ig = IntegratedGradients(fm.model, fm.heads, spec, IGSettings(steps=4))
    try:
        frozen = ig.explain(batch)
        assert live and not any(live)
        live.clear()
        plain = ig._explain(batch)  # the same computation with the parameters live
        assert any(live)
        with ThreadPoolExecutor(2) as pool:
            both = list(pool.map(lambda _: ig.explain(batch), range(4)))
    finally:
        handle.remove()
    np.testing.assert_allclose(frozen.tokens, plain.tokens, rtol=1e-5, atol=1e-7)
    for other in both:
        np.testing.assert_allclose(other.tokens, frozen.tokens, rtol=1e-5, atol=1e-7)
    assert [q.requires_grad for q in params] == before


def test_cpu_passes_stay_within_the_cache_budget_and_do_not_change_the_result(
        events: list[pd.DataFrame], vocab_bins: tuple[Any, Bins], monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU the points go through at most CPU_PASS_TOKENS tokens per pass (cache-sized), whatever
    batch_tokens allows; how the points are split into passes does not change the attributions."""
    import ehrfm.explain.ig as ig_mod

    vocab, bins = vocab_bins
    fm, spec = finetuned(vocab, "mamba2"), SPECS[0]
    batch = _batch(task_rows(events[:1], vocab, bins, spec.task))
    width = batch["concept_ids"].shape[1]
    passes: list[int] = []
    gauss8 = IGSettings(steps=8, max_steps=8, method="gauss")
    handle = fm.model.embeddings.norm.register_forward_hook(
        lambda _m, args, _o: passes.append(args[0].shape[0]))
    try:
        monkeypatch.setattr(ig_mod, "CPU_PASS_TOKENS", 2 * width)  # two points per pass
        split = IntegratedGradients(fm.model, fm.heads, spec, gauss8).explain(batch)
        path_passes = passes[2:]  # after the embedding pass and the forward of both ends
        assert path_passes == [2, 2, 2, 2]
        passes.clear()
        monkeypatch.setattr(ig_mod, "CPU_PASS_TOKENS", 10**9)
        whole = IntegratedGradients(fm.model, fm.heads, spec, gauss8).explain(batch)
        assert passes[2:] == [8]
    finally:
        handle.remove()
    np.testing.assert_allclose(split.tokens, whole.tokens, rtol=1e-5, atol=1e-7)
    assert split.rel_error[0] == pytest.approx(whole.rel_error[0], rel=1e-3, abs=1e-6)
