"""spark-submit job: an existing MEDS dataset or MEDS-like events parquet -> MEDS dataset.

    spark-submit etl/ingest_meds.py --meds <output> --input <MEDS root or parquet> [--numeric_col value]
        [--config ingest.yaml]

A thin main over ``ehrfm ingest meds`` (same flags, from :class:`ehrfm.config.ingest.MedsIngestConfig`
and the Layout; the dataset is written to the layout's MEDS folder, which may be a URI such as
hdfs:///meds). The session comes from spark-submit's configuration (``ehrfm.spark.get_spark``
never overrides its master).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, and etl/ holds jobs named like stdlib modules
# (etl/tokenize.py shadows ``tokenize``, which pandas needs): import nothing from here.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from ehrfm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["ingest", "meds", *sys.argv[1:]]))
