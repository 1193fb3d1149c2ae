"""``ehrfm prepare`` config and summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ehrfm.atomic import OverwriteOption
from ehrfm.config.base import ConfigBase, require
from ehrfm.config.spark import SparkConfig


@dataclass
class PrepareConfig(OverwriteOption):
    """``ehrfm prepare``: code vocabulary and numeric-value bins fitted on the train split of a MEDS
    dataset."""

    min_count: int = 5
    """Min train events for a code to get a token (else [UNK]); also the min train values for a code to get
    value bins."""
    n_bins: int = 20
    """Quantile bins per numeric code (20: with 10, the top bin of creatinine starts at ~2.0 mg/dL and hides
    the trends of the sickest stays; see bench/README.md)."""
    tasks: list[str] = field(default_factory=list)
    """Task names that get a prompt token [TASK:<name>]; empty = every task specification in tasks_dir."""
    task_tokens: bool = True
    """Add task prompt tokens at all (false: a vocabulary without any, e.g. for pretraining only)."""
    tasks_dir: str | None = None
    """Folder of task YAML files used when tasks is empty (default: the task specifications packaged with
    ehrfm)."""
    engine: Literal["auto", "spark", "local"] = "auto"
    """Spark (population scale, any master) or one local process (no JVM): identical vocab.json; bins.json
    exact in the local engine, within the rank error 1/percentile_accuracy in the Spark engine. auto: spark
    under spark-submit, with a non-local spark.master / $EHRFM_SPARK_MASTER or a non-file: URI folder, else
    local (the rule of every stage: ehrfm.config.spark.resolve_engine)."""
    percentile_accuracy: int = 10_000
    """Spark engine: accuracy of ``percentile_approx`` for the bin cut points. Each cut point at level q of a
    code with n train values is an observed value whose rank is within n/percentile_accuracy of q*n (rank
    error 1/percentile_accuracy; 10,000: 0.01 %). Higher costs sketch memory per code; exactness would
    shuffle all values of a code into one task. The local engine is exact (linear interpolation)."""
    spark: SparkConfig = field(default_factory=SparkConfig)
    """Spark session settings."""

    def __post_init__(self) -> None:
        require(self.min_count >= 1, "min_count", self.min_count, "must be >= 1")
        require(self.n_bins >= 2, "n_bins", self.n_bins, "must be >= 2")
        require(self.engine in ("auto", "spark", "local"), "engine", self.engine,
                "must be auto, spark or local")
        require(self.percentile_accuracy >= 1, "percentile_accuracy", self.percentile_accuracy,
                "must be >= 1")
        require(all(t.strip() for t in self.tasks), "tasks", self.tasks, "task names must not be empty")
        require(self.task_tokens or not self.tasks, "task_tokens", self.task_tokens,
                "tasks are named but task_tokens is false")


@dataclass
class PrepareSummary(ConfigBase):
    """What ``ehrfm prepare`` wrote (``vocab.json``, ``bins.json``) and counted on the train split."""

    tasks: list[str]
    """Tasks that got a prompt token."""
    train_subjects: int
    """Subjects in the train split."""
    train_events: int
    """Events of train subjects (every code)."""
    codes_seen_on_train: int
    """Distinct codes in train events."""
    codes_kept: int
    """Codes with at least min_count train events (each has a token)."""
    vocab_size: int
    """Tokens in the vocabulary (fixed tokens, task tokens and kept codes)."""
    codes_with_bins: int
    """Numeric codes with value bins."""
    seconds: float
    """Wall time of the fit."""
