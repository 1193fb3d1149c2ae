"""``ehrfm label`` config and summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ehrfm.atomic import OverwriteOption
from ehrfm.config.base import ConfigBase
from ehrfm.config.spark import SparkConfig


@dataclass
class LabelConfig(OverwriteOption):
    """``ehrfm label``: one label table per task specification, for an ingested MEDS dataset (Spark)."""

    tasks: list[str] = field(default_factory=list)
    """Task names to label; empty = every task specification in tasks_dir."""
    tasks_dir: str | None = None
    """Folder of task YAML files (default: the task specifications packaged with ehrfm)."""
    engine: Literal["spark", "reference"] = "spark"
    """spark: the task rules as Spark SQL expressions (one pass over the events, no Python per subject);
    reference: the per-subject Python engine in Spark (``applyInArrow``). Both write identical tables."""
    spark: SparkConfig = field(default_factory=SparkConfig)
    """Spark session settings."""


@dataclass
class LabelSummary(ConfigBase):
    """What ``ehrfm label`` wrote: rows, subjects, positives and prevalence per task and split."""

    tasks: dict[str, str]
    """task -> kind (binary, time_to_event, forecast)."""
    rows: list[dict[str, object]]
    """One record per (task, split): rows, subjects, positives, prevalence."""
    warnings: list[str] = field(default_factory=list)
    """Task code patterns that match no code of the dataset."""
