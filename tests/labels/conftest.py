"""Label-test setup. Spark's Python workers must run this interpreter (the venv), not ``python3`` from PATH;
``ehrfm.spark.get_spark`` does not set it yet (requested from the lead), so set it before the session
starts."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
