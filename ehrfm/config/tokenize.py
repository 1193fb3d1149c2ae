"""Tokenizer rules (:class:`TokenizerConfig`, saved with the tokens and used again at serving time) and the
``ehrfm tokenize`` stage config (:class:`TokenizeConfig`) and summary (:class:`TokenizeSummary`).

``DEFAULT_MAX_LEN`` is the one default of the row length: the tokens record the ``max_len`` they were cut at
(``tokens/tokenize.json``) and training and serving read it from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ehrfm.atomic import OverwriteOption
from ehrfm.config.base import ConfigBase, require
from ehrfm.config.spark import SparkConfig

DEFAULT_MAX_LEN = 2048
"""Longest token row when nothing else says (EHRMamba's context length). Kept after the 30k-patient context
study (README "Whole-history context": 256 / 512 / 1,024 tokens within noise of each other, 1,024 = whole
history there): whole history, no accuracy given up, the same cost per training token."""


@dataclass(frozen=True)
class TokenizerConfig(ConfigBase):
    """How a patient timeline becomes a token stream (saved in ``tokenize.json``; serving reuses it)."""

    max_len: int = DEFAULT_MAX_LEN
    """Longest row in tokens; longer rows keep the leading and static tokens and the most recent visits."""
    visit_gap_hours: float = 24.0
    """Events without an encounter that are not inside an encounter's span form time-based visits; a new one
    starts after a gap longer than this. The same gap decides whether the last visit of a task row is still
    open at prediction_time when no end code was seen."""
    visit_end_patterns: tuple[str, ...] = ("ENCOUNTER//*//END", "HOSPITAL_DISCHARGE*")
    """fnmatch patterns of codes that close a visit (an encounter's end)."""
    static_prefixes: tuple[str, ...] = ("GENDER//", "RACE//", "ETHNICITY//")
    """Code prefixes of demographic events hoisted to the static block at the start (events with a null time
    are always static; timed ones only when at or before the cut)."""

    def __post_init__(self) -> None:
        require(self.max_len >= 8, "max_len", self.max_len, "must be >= 8")
        require(self.visit_gap_hours >= 0, "visit_gap_hours", self.visit_gap_hours, "must be >= 0")


@dataclass
class TokenizeConfig(OverwriteOption):
    """``ehrfm tokenize``: MEDS events + label tables -> token-stream parquet (pretraining and task rows)."""

    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Tokenizer rules (saved with the tokens; serving uses the same)."""
    tasks: list[str] = field(default_factory=list)
    """Tasks whose label tables are tokenized into task rows; empty = every <task>.parquet in the labels
    folder. Each needs a prompt token in the vocabulary (`ehrfm prepare --tasks`)."""
    task_rows: bool = True
    """Write task rows from the label tables (false: pretraining rows only; no labels folder needed)."""
    pretrain_rows: bool = True
    """Write pretraining rows (one per subject)."""
    engine: Literal["auto", "spark", "local"] = "auto"
    """Spark (population scale, any master) or one local process (no JVM); identical token rows. auto: spark
    under spark-submit, with a non-local spark.master / $EHRFM_SPARK_MASTER or a non-file: URI folder, else
    local (the rule of every stage: ehrfm.config.spark.resolve_engine)."""
    spark: SparkConfig = field(default_factory=SparkConfig)
    """Spark session settings."""

    def __post_init__(self) -> None:
        require(self.engine in ("auto", "spark", "local"), "engine", self.engine,
                "must be auto, spark or local")
        require(self.task_rows or self.pretrain_rows, "pretrain_rows", self.pretrain_rows,
                "nothing to write with task_rows=false")
        require(self.task_rows or not self.tasks, "task_rows", self.task_rows,
                "tasks are named but task_rows is false")
        require(all(t.strip() for t in self.tasks), "tasks", self.tasks, "task names must not be empty")


@dataclass
class TokenizeSummary(ConfigBase):
    """What ``ehrfm tokenize`` wrote: token rows per (task, split) with label and length statistics."""

    tasks: list[str]
    """Tasks whose task rows were written (tokens/tasks/<task>/)."""
    pretrain: bool
    """Whether pretraining rows were written (tokens/pretrain/)."""
    n_rows: int
    """Token rows written in all."""
    rows: list[dict[str, object]]
    """One record per (task, split): rows, label_mean, event_rate, len_p50/p90/p99/max (task "(pretrain)" for
    pretraining rows)."""
    seconds: float
    """Wall time of tokenizing and writing."""
