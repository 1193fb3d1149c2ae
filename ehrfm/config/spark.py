"""The Spark section shared by every Spark stage (``--spark.master``, ``--spark.conf``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ehrfm.config.base import ConfigBase


@dataclass
class SparkConfig(ConfigBase):
    """Spark session settings; under ``spark-submit`` the submitted master and ``--conf`` values win."""

    master: str | None = None
    """Spark master (default: $EHRFM_SPARK_MASTER or local[*]; ignored under spark-submit)."""
    conf: dict[str, str] = field(default_factory=dict)
    """Extra Spark settings, e.g. {spark.driver.memory: 8g}."""


def resolve_engine(engine: str, master: str | None, inputs: Sequence[str] = ()) -> str:
    """The engine a stage's ``--engine`` runs as: any engine but ``auto`` is itself; ``auto`` is ``spark``
    when the process runs under spark-submit (the submitted master decides), when ``master`` (else
    ``$EHRFM_SPARK_MASTER``) names a non-local master (``spark://``, ``yarn``, ``k8s://``, ``mesos://``) or
    when an input is a URI other than ``file:`` (HDFS, S3, ...: read through Hadoop), else ``local`` (this
    machine, no JVM). One rule for every stage with a local engine (ingest fhir/mimic, label, prepare,
    tokenize)."""
    import os

    if engine != "auto":
        return engine
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        return "spark"
    if any("://" in i and not i.startswith("file:") for i in inputs):
        return "spark"
    chosen = master or os.environ.get("EHRFM_SPARK_MASTER") or "local"
    return "local" if chosen.startswith("local") else "spark"
