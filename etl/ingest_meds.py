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

from ehrfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", "meds", *sys.argv[1:]]))
