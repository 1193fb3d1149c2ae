"""The Spark section shared by every Spark stage (``--spark.master``, ``--spark.conf``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ehrfm.config.base import ConfigBase


@dataclass
class SparkConfig(ConfigBase):
    """Spark session settings; under ``spark-submit`` the submitted master and ``--conf`` values win."""

    master: str | None = None
    """Spark master (default: $EHRFM_SPARK_MASTER or local[*]; ignored under spark-submit)."""
    conf: dict[str, str] = field(default_factory=dict)
    """Extra Spark settings, e.g. {spark.driver.memory: 8g}."""
