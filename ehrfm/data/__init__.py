"""Datasets, collation and token-budget batching over token-stream parquet (torch, no Spark)."""

from ehrfm.data.collate import Collator, padded_length
from ehrfm.data.dataset import LIST_COLUMNS, TokenStreamDataset
from ehrfm.data.sampler import StreamingBatchSampler, TokenBudgetBatchSampler

__all__ = ["LIST_COLUMNS", "Collator", "StreamingBatchSampler", "TokenBudgetBatchSampler",
           "TokenStreamDataset",
           "padded_length"]
