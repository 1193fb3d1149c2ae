"""``ehrfm label`` config and summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ehrfm.atomic import OverwriteOption
from ehrfm.config.base import ConfigBase
from ehrfm.config.spark import SparkConfig


@dataclass
class LabelConfig(OverwriteOption):
    """``ehrfm label``: one label table per task specification, for an ingested MEDS dataset (on one machine
    or with Spark)."""

    tasks: list[str] = field(default_factory=list)
    """Task names to label; empty = every task specification in tasks_dir."""
    tasks_dir: str | None = None
    """Folder of task YAML files (default: the task specifications packaged with ehrfm)."""
    engine: Literal["auto", "spark", "reference", "local"] = "auto"
    """local: the task rules as columnar polars code in this process (no Spark, no JVM; fastest on one
    machine); spark: the rules as Spark SQL expressions (one pass over the events, for a cluster);
    reference: the per-subject Python engine in Spark (``applyInArrow``); auto: spark under spark-submit,
    when spark.master names a cluster (spark://, yarn, k8s://, mesos://) or when meds or labels is a URI
    other than file: (hdfs://, s3a://: read and written through Hadoop), else local. All write identical
    tables."""
    spark: SparkConfig = field(default_factory=SparkConfig)
    """Spark session settings (not used by the local engine)."""


@dataclass
class LabelSummary(ConfigBase):
    """What ``ehrfm label`` wrote: rows, subjects, positives and prevalence per task and split."""

    tasks: dict[str, str]
    """task -> kind (binary, time_to_event, forecast)."""
    rows: list[dict[str, object]]
    """One record per (task, split): rows, subjects, positives, prevalence."""
    warnings: list[str] = field(default_factory=list)
    """Task code patterns that match no code of the dataset."""
