"""spark-submit job: MIMIC-IV hosp/ + icu/ CSV(.gz) -> MEDS dataset (same code as `ehrfm ingest mimic`).

    spark-submit --master local[2] etl/ingest_mimic.py --input ... --output ...

The Spark session comes from `ehrfm.spark.get_spark`, which keeps spark-submit's --master and --conf.
See etl/README.md for cluster use.
"""

from __future__ import annotations

import os
import sys

# etl/ holds other jobs named like stdlib modules (e.g. tokenize.py): drop this folder from the import path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

from ehrfm.ingest.cli import job_main as main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main("mimic", sys.argv[1:]))
