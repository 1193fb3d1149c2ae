"""Fixtures for the ingest tests."""

from __future__ import annotations

import os
import sys

# Spark's Python workers must run this interpreter (pyarrow, ehrfm); set before the session fixture starts
# the SparkContext. (ehrfm.spark.get_spark should do this itself; reported to the lead.)
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
