"""``ehrfm simulate`` config and summary (no torch here: the CLI builds its parser from this module)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ehrfm.config.base import ConfigBase, require


@dataclass
class SimulateConfig(ConfigBase):
    """``ehrfm simulate``: zero-shot risk from M futures sampled by the pretrained model (no finetuning)."""

    tasks: list[str] = field(default_factory=list)
    """Tasks to simulate (token rows under <tokens>/tasks/<task>/); empty = every tokenized binary or
    time-to-event task."""
    tasks_dir: str | None = None
    """Folder of task YAML files whose outcome rules are read (default: the packaged task specifications)."""
    samples: int = 32
    """M: futures sampled per task row."""
    temperature: float = 1.0
    """Softmax temperature of the next-token draws (1: the model's own distribution)."""
    top_p: float = 1.0
    """Nucleus sampling: draw from the smallest set of most likely tokens holding this mass (1: all)."""
    max_steps: int = 2048
    """Tokens generated per future at most; a future still undecided then is truncated (counted, see
    truncated)."""
    truncated: Literal["negative", "exclude"] = "negative"
    """A truncated future counts as one without the outcome (negative) or leaves the denominator (exclude)."""
    splits: list[str] = field(default_factory=lambda: ["tuning", "held_out"])
    """Splits whose task rows are simulated (tuning: decision thresholds of the evaluation)."""
    max_rows: int = 0
    """At most this many rows per task and split, a seeded random subset (0: all)."""
    rows_per_batch: int = 32
    """Task rows whose futures are generated together (a batch holds rows x samples futures)."""
    seed: int = 0
    """Seed of the draws (the same seed and settings give the same predictions)."""
    ci_level: float = 0.95
    """Level of the per-row Monte-Carlo (Jeffreys) interval of the share."""
    gap_quantiles: int = 16
    """Quantiles kept of each within-visit gap distribution (the clock inside visits)."""
    gap_min_count: int = 20
    """Gaps of a (visit class, code) key seen fewer times back off to coarser keys."""
    pretrained: str | None = None
    """Pretrained model folder (default <runs>/pretrain/model)."""
    model_name: str | None = None
    """The predictions' model column (default zero_shot_m<samples>); also the output folder
    <runs>/simulate/<model_name>/."""
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    """Where the model runs (auto: cuda when available)."""
    progress: bool = True
    """Show a progress bar over batches."""

    def __post_init__(self) -> None:
        require(self.samples >= 1, "samples", self.samples, "must be >= 1")
        require(self.temperature > 0, "temperature", self.temperature, "must be > 0")
        require(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        require(self.max_steps >= 1, "max_steps", self.max_steps, "must be >= 1")
        require(self.max_rows >= 0, "max_rows", self.max_rows, "must be >= 0")
        require(self.rows_per_batch >= 1, "rows_per_batch", self.rows_per_batch, "must be >= 1")
        require(0 < self.ci_level < 1, "ci_level", self.ci_level, "must be in (0, 1)")
        require(self.gap_quantiles >= 1, "gap_quantiles", self.gap_quantiles, "must be >= 1")
        require(self.gap_min_count >= 1, "gap_min_count", self.gap_min_count, "must be >= 1")
        require(len(self.splits) >= 1, "splits", self.splits, "must name at least one split")
        require(self.model_name is None or (self.model_name.strip() != "" and "/" not in self.model_name),
                "model_name", self.model_name, "must be a non-empty name without '/'")

    @property
    def name(self) -> str:
        """The model name written in the predictions."""
        return self.model_name or f"zero_shot_m{self.samples}"


@dataclass
class SimulatedTask(ConfigBase):
    """What was simulated for one task."""

    rows: int
    """Task rows simulated (all splits)."""
    futures: int
    """Futures sampled."""
    truncated: int
    """Futures that hit max_steps undecided."""
    mean_steps: float
    """Mean tokens generated per future."""
    seconds: float
    """Wall time of the simulation (prefill + generation)."""
    seconds_per_row: float
    """seconds / rows."""


@dataclass
class SimulateSummary(ConfigBase):
    """What ``ehrfm simulate`` wrote."""

    model_name: str
    """The predictions' model column."""
    predictions: str
    """predictions.parquet (the ehrfm.evaluate contract; ``ehrfm evaluate`` picks it up)."""
    tasks: dict[str, SimulatedTask]
    """Per task: rows, futures, truncated futures, steps, time."""
    skipped_tasks: dict[str, str] = field(default_factory=dict)
    """Tokenized tasks not simulated, with the reason (forecast tasks, unsupported outcome specs)."""
    gap_fit_tokens: int = 0
    """Code-token gaps the within-visit clock was fitted on (train pretraining rows)."""
    seconds: float = 0.0
    """Wall time of the stage."""
