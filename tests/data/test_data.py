"""Stand-in data in TOKENS_SCHEMA, dataset filtering/validation, collation/truncation, token-budget
batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers.standin import write_standin

from ehrfm.data import Collator, StreamingBatchSampler, TokenBudgetBatchSampler, TokenStreamDataset
from ehrfm.schema import CLS, PAD_ID, TOKENS_SCHEMA, VS, TokenType
from ehrfm.vocab import Vocabulary


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_standin(tmp_path_factory.mktemp("tok"), n_subjects=50, seed=3, max_len=80)


def test_standin_matches_the_schema(tokens: Path) -> None:
    table = pq.read_table(tokens / "pretrain" / "part-0.parquet")
    assert table.schema.equals(TOKENS_SCHEMA)
    vocab = Vocabulary.load(tokens / "vocab.json")
    row = table.slice(0, 1).to_pylist()[0]
    assert row["concept_ids"][0] == vocab.id(CLS) and vocab.id(VS) in row["concept_ids"]
    assert row["length"] == len(row["concept_ids"]) == len(row["ages"]) == len(row["visit_segments"])
    assert all(b >= a for a, b in zip(row["times"], row["times"][1:], strict=False))  # time never goes back
    assert max(row["concept_ids"]) < len(vocab)
    assert set(row["type_ids"]) <= set(range(1, TokenType.COUNT))
    assert set(table["split"].to_pylist()) == {"train", "tuning", "held_out"}


def test_dataset_filters_and_items(tokens: Path) -> None:
    full = TokenStreamDataset(tokens / "pretrain")
    train = TokenStreamDataset(tokens / "pretrain", split="train")
    tuning = TokenStreamDataset(tokens, split="tuning")  # a parent folder works too (rglob)
    assert len(train) + len(tuning) < len(full) == 50
    item = train[3]
    assert item["length"] == len(item["concept_ids"]) == len(item["times"])
    assert item["concept_ids"].dtype == np.int32 and item["ages"].dtype == np.float32


def test_dataset_rejects_inconsistent_rows(tmp_path: Path) -> None:
    rows = {f.name: [None] for f in TOKENS_SCHEMA}
    rows.update(subject_id=[42], split=["train"], length=[3], concept_ids=[[3, 4, 5]], type_ids=[[1, 6, 6]],
                ages=[[1.0, 1.0, 1.0]], times=[[0.0, 0.0, 0.0]], visit_orders=[[0, 1, 1]],
                visit_segments=[[0, 1]])
    pq.write_table(pa.Table.from_pydict(rows, schema=TOKENS_SCHEMA), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="subject_id=42.*visit_segments"):
        TokenStreamDataset(tmp_path)
    pq.write_table(pa.table({"subject_id": [1]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="missing column"):
        TokenStreamDataset(tmp_path)


def _item(n: int, sid: int = 0) -> dict:
    return {"concept_ids": np.arange(1, n + 1, dtype=np.int32), "type_ids": np.full(n, 6, np.int8),
            "ages": np.linspace(30, 31, n, dtype=np.float32), "times": np.arange(n, dtype=np.float32),
            "visit_orders": np.ones(n, np.int32), "visit_segments": np.ones(n, np.int8), "subject_id": sid,
            "length": n}


def test_collation_pads_right_to_multiple_of_8_and_truncates_keeping_recent() -> None:
    batch = Collator(max_len=12)([_item(5, 1), _item(20, 2)])
    assert batch["concept_ids"].shape == (2, 16)  # 12 kept -> rounded up to 16
    assert batch["lengths"].tolist() == [5, 12]
    assert batch["concept_ids"][0, :5].tolist() == [1, 2, 3, 4, 5]
    assert (batch["concept_ids"][0, 5:] == PAD_ID).all() and (batch["type_ids"][0, 5:] == 0).all()
    assert batch["concept_ids"][1, :12].tolist() == list(range(9, 21))  # the most recent 12 of 20
    assert batch["times"][1, 0].item() == 8.0  # streams truncated together
    assert batch["subject_id"].tolist() == [1, 2]
    assert Collator()([_item(3)])["concept_ids"].shape == (1, 8)


def test_collation_of_task_rows_carries_labels() -> None:
    a, b = _item(4), _item(6)
    a.update(label=1.0, duration_days=None, event=None)
    b.update(label=0.0, duration_days=12.5, event=1)
    batch = Collator()([a, b])
    assert batch["label"].tolist() == [1.0, 0.0]
    assert np.isnan(batch["duration_days"][0].item()) and batch["event"].tolist() == [-1, 1]


def _lengths() -> np.ndarray:
    return np.random.default_rng(0).integers(3, 120, size=300)


def test_token_budget_batches_cover_every_row_once_within_budget() -> None:
    lengths = _lengths()
    s = TokenBudgetBatchSampler(lengths, max_tokens=512, seed=1, max_len=100, pool_size=64)
    batches = list(s)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(300))
    for b in batches:
        width = max(min(int(lengths[i]), 100) for i in b)
        assert len(b) * (-(-width // 8) * 8) <= 512
    assert len(batches) == len(s)
    sizes = [len(b) for b in batches]
    assert max(sizes) > 3 * min(sizes)  # short rows travel in bigger batches


def test_sampler_is_deterministic_and_changes_per_epoch() -> None:
    a = TokenBudgetBatchSampler(_lengths(), 512, seed=7, max_len=100)
    b = TokenBudgetBatchSampler(_lengths(), 512, seed=7, max_len=100)
    assert list(a) == list(b)
    b.set_epoch(1)
    assert list(b) != list(a)
    assert TokenBudgetBatchSampler(_lengths(), 512, seed=8, max_len=100).plan(0) != a.plan(0)


def test_sampler_resumes_mid_epoch() -> None:
    s = TokenBudgetBatchSampler(_lengths(), 512, seed=2, max_len=100)
    s.set_epoch(3)
    expected = s.plan(3)
    s.load_state_dict({"epoch": 3, "skip": 5})
    assert s.state_dict() == {"epoch": 3, "skip": 5}
    assert list(s) == expected[5:]
    assert list(s) == expected  # the skip applies once


def test_streaming_sampler_spans_epochs_and_starts_anywhere() -> None:
    base = TokenBudgetBatchSampler(_lengths(), 512, seed=2, max_len=100)
    n0 = len(base.plan(0))
    total = n0 + 7
    full = list(StreamingBatchSampler(base, total))
    assert len(full) == total and full[:n0] == base.plan(0) and full[n0:] == base.plan(1)[:7]
    for start in (0, 3, n0, n0 + 2, total):
        assert list(StreamingBatchSampler(base, total, start=start)) == full[start:]
    with pytest.raises(ValueError, match="start"):
        StreamingBatchSampler(base, total, start=total + 1)


def test_distributed_ranks_get_disjoint_equal_shares() -> None:
    ranks = [TokenBudgetBatchSampler(_lengths(), 512, seed=2, max_len=100, rank=r, world_size=3).plan(0)
             for r in range(3)]
    assert len({len(r) for r in ranks}) == 1
    seen = [i for r in ranks for b in r for i in b]
    assert len(seen) == len(set(seen))


def test_budget_smaller_than_one_sequence_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_tokens=16"):
        TokenBudgetBatchSampler([40], max_tokens=16)


def test_values_stream_collates_with_nan_padding_and_older_files_read_as_no_value(tmp_path: Path) -> None:
    a, b = _item(3), _item(10)
    b["values"] = np.where(np.arange(10) % 2 == 1, np.arange(10) / 10, np.nan).astype(np.float32)
    batch = Collator(max_len=8)([a, b])  # ``a`` has no values stream at all (a hand-made or older row)
    assert batch["values"].dtype == torch.float32 and batch["values"].shape == (2, 8)
    assert torch.isnan(batch["values"][0]).all()
    # truncated with the other streams
    np.testing.assert_allclose(batch["values"][1].numpy(), b["values"][-8:])
    # a token file written before the values stream existed: every token reads as "no value"
    old = pq.read_table(write_standin(tmp_path / "old", n_subjects=5, seed=1) / "pretrain" / "part-0.parquet")
    assert np.isfinite(np.concatenate(old["values"].to_pylist())).any()
    pq.write_table(old.drop_columns(["values"]), tmp_path / "old" / "pretrain" / "part-0.parquet")
    ds = TokenStreamDataset(tmp_path / "old" / "pretrain")
    assert all(np.isnan(ds[i]["values"]).all() and len(ds[i]["values"]) == ds[i]["length"]
               for i in range(len(ds)))
