"""Fixtures for the ingest tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

# Spark's Python workers must run this interpreter (pyarrow, ehrfm); set before the session fixture starts
# the SparkContext. (ehrfm.spark.get_spark should do this itself; reported to the lead.)
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def mimic_demo_ingested(spark, mimic_demo: Path,  # type: ignore[no-untyped-def]
                        tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, pd.DataFrame]:
    """The whole MIMIC-IV demo ingested once per test session (output folder, summary, events): every
    test module that reads the full demo output shares it (an ingest takes about a minute)."""
    from ehrfm.ingest.mimic.ingest import ingest_mimic

    out = tmp_path_factory.mktemp("mimic_demo") / "meds"
    summary = ingest_mimic(spark, str(mimic_demo), str(out))
    return out, summary, pd.read_parquet(out / "data")
