"""Token-budget batches for whole-history rows (``data.long_rows``): every batch within the budget unless it
is one row longer than the budget, every row exactly once per epoch, deterministic by seed, the default
("error") unchanged, and the option reaching pretraining, finetuning validation and prediction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import test_finetune as ft

from ehrfm.config.base import ConfigError
from ehrfm.config.train import DataConfig, PretrainConfig
from ehrfm.data import StreamingBatchSampler, TokenBudgetBatchSampler
from ehrfm.data.collate import padded_length
from ehrfm.layout import Layout

BUDGET = 1024


def _lengths(seed: int = 0, n: int = 400) -> np.ndarray:
    """Mostly short rows (as task rows: a few hundred tokens) and a tail of whole-history rows up to 16k."""
    rng = np.random.default_rng(seed)
    short = rng.integers(3, 600, size=n)
    long = rng.integers(BUDGET + 1, 16_384, size=n // 20)
    return rng.permutation(np.concatenate([short, long]))


def _padded(lengths: np.ndarray, rows: list[int], max_len: int | None = None) -> int:
    """Padded size of a batch: rows x padded width (what the collator allocates)."""
    return len(rows) * max(padded_length(int(lengths[i]), 8, max_len) for i in rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_long_rows_alone_every_batch_within_budget_every_row_once(seed: int) -> None:
    lengths = _lengths(seed)
    s = TokenBudgetBatchSampler(lengths, BUDGET, seed=seed, pool_size=128, long_rows="alone")
    for epoch in (0, 1):
        s.set_epoch(epoch)
        batches = list(s)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # exactly once
        for b in batches:
            if _padded(lengths, b) > BUDGET:
                assert len(b) == 1, "only a row longer than the budget may exceed it, alone"
        oversized = {i for i in range(len(lengths)) if padded_length(int(lengths[i])) > BUDGET}
        assert oversized and {b[0] for b in batches if len(b) == 1} >= oversized
        sizes = [len(b) for b in batches]
        assert max(sizes) >= BUDGET // 600  # short rows still fill their batches


def test_long_rows_alone_under_max_len_counts_the_cut_length() -> None:
    """With a collation cap, a row is as long as its cut: rows longer than max_len are not oversized."""
    lengths = _lengths(3)
    s = TokenBudgetBatchSampler(lengths, BUDGET, seed=0, max_len=512, long_rows="alone")
    assert all(_padded(lengths, b, 512) <= BUDGET for b in s.plan(0))


def test_long_rows_alone_is_deterministic_by_seed() -> None:
    lengths = _lengths(4)
    a = TokenBudgetBatchSampler(lengths, BUDGET, seed=7, long_rows="alone")
    b = TokenBudgetBatchSampler(lengths, BUDGET, seed=7, long_rows="alone")
    assert a.plan(0) == b.plan(0) and a.plan(1) == b.plan(1)
    assert a.plan(0) != a.plan(1)
    assert TokenBudgetBatchSampler(lengths, BUDGET, seed=8, long_rows="alone").plan(0) != a.plan(0)
    total = len(a.plan(0)) + 5
    stream = list(StreamingBatchSampler(a, total, start=3))
    assert stream == (a.plan(0) + a.plan(1))[3:total]  # the resumable stream is unchanged by the option


def test_default_unchanged_when_every_row_fits() -> None:
    """Where today's sampler accepts the budget, "alone" plans exactly the same batches."""
    lengths = np.random.default_rng(5).integers(3, 900, size=500)
    for seed in range(3):
        base = TokenBudgetBatchSampler(lengths, BUDGET, seed=seed, pool_size=64)
        alone = TokenBudgetBatchSampler(lengths, BUDGET, seed=seed, pool_size=64, long_rows="alone")
        assert base.plan(0) == alone.plan(0) and base.plan(2) == alone.plan(2)


def test_default_refuses_a_row_longer_than_the_budget() -> None:
    with pytest.raises(ValueError, match="data.long_rows=alone"):
        TokenBudgetBatchSampler(_lengths(), BUDGET)
    with pytest.raises(ValueError, match="long_rows"):
        TokenBudgetBatchSampler([10], BUDGET, long_rows="sometimes")


def test_config_option_default_and_validation() -> None:
    assert DataConfig().long_rows == "error"
    cfg = PretrainConfig().replace(**{"data.long_rows": "alone"})
    assert PretrainConfig.from_dict(cfg.to_dict()).data.long_rows == "alone"
    with pytest.raises(ConfigError, match="long_rows"):
        PretrainConfig().replace(**{"data.long_rows": "sometimes"})


@pytest.mark.parametrize("long_rows", ["error", "alone"])
def test_pretraining_takes_rows_longer_than_the_budget_alone(standin_tokens: Path, tmp_path: Path,
                                                             long_rows: str) -> None:
    """Stand-in rows are up to 64 tokens; a 32-token budget trains with "alone" and is refused without."""
    from ehrfm.train.stage import run_pretrain

    cfg = PretrainConfig().replace(**{
        "model.d_model": 16, "model.n_layers": 1, "model.d_state": 4, "model.headdim": 8, "model.n_heads": 2,
        "model.chunk_size": 16, "data.max_tokens": 32, "data.pool_size": 32, "data.long_rows": long_rows,
        "trainer.max_steps": 3, "trainer.val_check_interval": 3, "trainer.checkpoint_every_n_steps": 3,
        "trainer.progress_bar": False, "tracking.enabled": False, "optim.warmup_steps": 1})
    layout = Layout(root=str(tmp_path), tokens=str(standin_tokens))
    if long_rows == "error":
        with pytest.raises(ValueError, match="max_tokens=32"):
            run_pretrain(cfg, layout)
        return
    summary = run_pretrain(cfg, layout)
    assert summary.global_step == 3 and summary.val_loss is not None


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finetuning tests' planted task rows (tokens/, labels/, meds/)."""
    root = tmp_path_factory.mktemp("ft")
    ft.write_task_tokens(root)
    return root


@pytest.mark.parametrize("long_rows", ["error", "alone"])
def test_finetuning_and_prediction_take_long_rows_alone(planted: Path, tmp_path: Path,
                                                        long_rows: str) -> None:
    """Planted task rows are up to 32 tokens: a 16-token budget finetunes (training, validation) and
    predicts every row with "alone"; without it the validation pass refuses the budget."""
    from ehrfm.train.predict import FinetunedModel, task_batches
    from ehrfm.train.stage import run_finetune

    cfg = ft._cfg(4, **{"data.max_tokens": 16, "data.long_rows": long_rows, "trainer.val_check_interval": 2,
                     "trainer.checkpoint_every_n_steps": 2, "tasks": ["bin_a"]})
    layout = ft._layout(planted, tmp_path)
    if long_rows == "error":
        with pytest.raises(ValueError, match="max_tokens=16"):
            run_finetune(cfg, layout)
        return
    assert run_finetune(cfg, layout).global_step == 4
    fm = FinetunedModel.load(layout.finetune_run.model)
    seen: list[int] = []
    rows = 0
    for ds, idx, batch in task_batches(fm, layout.token_paths.root, "bin_a", "held_out", max_tokens=16):
        width = int(batch["concept_ids"].shape[1])
        assert len(idx) * width <= 16 or len(idx) == 1
        seen, rows = seen + idx, len(ds)
    assert rows > 0 and sorted(seen) == list(range(rows))
    assert any(int(n) > 16 for n in ds.lengths)  # some rows were over the budget
