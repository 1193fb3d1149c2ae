"""spark-submit job: vocabulary and numeric-value bins fitted on the train split of an ingested MEDS dataset.

    spark-submit etl/prepare.py --root <pipeline root> [--meds <meds>] [--tokens <tokens>] [--min_count 5]
        [--n_bins 20] [--tasks '[readmission_30d]'] [--config prepare.yaml]

A thin main over ``ehrfm prepare`` (same flags, from :class:`ehrfm.config.prepare.PrepareConfig` and the
Layout); the session comes from spark-submit's configuration (``ehrfm.spark.get_spark`` never overrides its
master).
"""

from __future__ import annotations

import sys

from ehrfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["prepare", *sys.argv[1:]]))
