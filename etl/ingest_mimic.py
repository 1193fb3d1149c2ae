"""spark-submit job: MIMIC-IV hosp/ + icu/ CSV(.gz) -> MEDS dataset.

    spark-submit etl/ingest_mimic.py --meds <output> --input <MIMIC-IV root> [--rules my_rules.yaml]
        [--config ingest.yaml]

A thin main over ``ehrfm ingest mimic`` (same flags, from :class:`ehrfm.config.ingest.MimicIngestConfig`
and the Layout; the dataset is written to the layout's MEDS folder, which may be a URI such as
hdfs:///meds). The session comes from spark-submit's configuration (``ehrfm.spark.get_spark``
never overrides its master).
"""

from __future__ import annotations

import sys

from ehrfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", "mimic", *sys.argv[1:]]))
