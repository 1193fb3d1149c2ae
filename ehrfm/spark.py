"""Spark session factory: ``local[*]`` by default, UTC, quiet logs; on a cluster the session that
``spark-submit`` configured is reused unchanged (``getOrCreate``): its ``--name``, ``--master`` and every
``--conf`` win. Started by ehrfm itself on a cluster master (``--spark.master spark://…``), the session ships
the ehrfm package to the executors (the job of ``--py-files`` under spark-submit)."""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import zipfile
from pathlib import Path
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
    # Under spark-submit the JVM already carries spark.master, spark.app.name (--name) and every --conf:
    # never override those.
    given = SparkConf()
    submitted = given.contains("spark.master")
    builder = SparkSession.builder
    if not (submitted and given.contains("spark.app.name")):
        builder = builder.appName(app_name)
    chosen: str = (given.get("spark.master") or "") if submitted and not master else (
        master or os.environ.get("EHRFM_SPARK_MASTER", "local[*]"))
    if master or not submitted:
        builder = builder.master(chosen)
    defaults = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.shuffle.partitions": os.environ.get("EHRFM_SHUFFLE_PARTITIONS", "8"),
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }
    if not submitted:  # our own quiet local session; spark-submit users keep their UI and driver settings
        defaults.update({"spark.ui.showConsoleProgress": "false", "spark.ui.enabled": "false",
                         "spark.driver.memory": os.environ.get("EHRFM_DRIVER_MEMORY", "4g")})
    for k, v in {**defaults, **(conf or {})}.items():
        if not (submitted and k in defaults and given.contains(k)):
            builder = builder.config(k, v)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    if not submitted and not re.match(r"local(\[|$)", str(chosen)):
        spark.sparkContext.addPyFile(str(package_zip()))  # executors of a cluster may not have ehrfm
    return spark


def package_zip(dst: str | Path | None = None) -> Path:
    """A zip of the installed ``ehrfm`` package (code and package data, no caches) for executors' Python
    path, named after its content and built once per content in ``dst`` (default the temp folder)."""
    import ehrfm

    root = Path(ehrfm.__file__).resolve().parent
    files = sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
                   and p.suffix not in (".pyc", ".pyo"))
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(root)).encode())
        digest.update(f.read_bytes())
    out = Path(dst or tempfile.gettempdir()) / f"ehrfm-{ehrfm.__version__}-{digest.hexdigest()[:12]}.zip"
    if not out.exists():
        tmp = out.with_name(f".{out.name}.{os.getpid()}")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, str(Path("ehrfm") / f.relative_to(root)))
        os.replace(tmp, out)
    return out
