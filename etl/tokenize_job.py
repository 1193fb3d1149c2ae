"""spark-submit job: token-stream parquet (pretraining rows and task rows) of an ingested, labelled dataset.

    spark-submit etl/tokenize_job.py --root <pipeline root> [--meds <meds>] [--labels <labels>]
        [--tokens <tokens>] [--tokenizer.max_len 2048] [--tasks '[readmission_30d]'] [--config tokenize.yaml]

A thin main over ``ehrfm tokenize`` (same flags, from :class:`ehrfm.config.tokenize.TokenizeConfig` and the
Layout); the session comes from spark-submit's configuration (``ehrfm.spark.get_spark`` never overrides its
master).
"""

from __future__ import annotations

import sys

from ehrfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["tokenize", *sys.argv[1:]]))
