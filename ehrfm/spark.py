"""Spark session factory: ``local[*]`` by default, UTC, quiet logs; on a cluster the session that
``spark-submit`` configured is reused unchanged (``getOrCreate``)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


def get_spark(app_name: str = "ehrfm", master: str | None = None,
              conf: dict[str, str] | None = None) -> SparkSession:
    """Return the active Spark session or build one.

    ``master`` defaults to ``$EHRFM_SPARK_MASTER`` or ``local[*]`` when not launched by spark-submit
    (spark-submit sets ``spark.master`` itself, and we never override it).
    """
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYARROW_IGNORE_TIMEZONE", "1")
    # Python workers must run this interpreter (the venv with pyarrow), not whatever python is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    from pyspark import SparkConf, SparkContext

    if "PYSPARK_GATEWAY_PORT" in os.environ:
        # Launched by spark-submit: attach to its JVM first so SparkConf() sees --master and every --conf.
        SparkContext._ensure_initialized()
    builder = SparkSession.builder.appName(app_name)
    # Under spark-submit the JVM already carries spark.master (and every --conf): never override those.
    submitted = SparkConf().contains("spark.master")
    if master or not submitted:
        builder = builder.master(master or os.environ.get("EHRFM_SPARK_MASTER", "local[*]"))
    defaults = {
        "spark.sql.session.timeZone": "UTC",
        "spark.ui.showConsoleProgress": "false",
        "spark.ui.enabled": "false",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": os.environ.get("EHRFM_SHUFFLE_PARTITIONS", "8"),
        "spark.driver.memory": os.environ.get("EHRFM_DRIVER_MEMORY", "4g"),
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }
    for k, v in {**defaults, **(conf or {})}.items():
        if not (submitted and k in defaults and SparkConf().contains(k)):
            builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
