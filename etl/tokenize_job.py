"""spark-submit job: token-stream parquet (pretraining rows and task rows) of an ingested, labelled dataset.

    spark-submit etl/tokenize_job.py --root <pipeline root> [--meds <meds>] [--labels <labels>]
        [--tokens <tokens>] [--tokenizer.max_len 2048] [--tasks '[readmission_30d]'] [--config tokenize.yaml]

A thin main over ``ehrfm tokenize`` (same flags, from :class:`ehrfm.config.tokenize.TokenizeConfig` and the
Layout); the session comes from spark-submit's configuration (``ehrfm.spark.get_spark`` never overrides its
master).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path; the jobs in etl/ are scripts, not modules, and must not
# shadow an importable name (a job once called tokenize.py hid the stdlib module): drop that entry first.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from ehrfm.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tokenize", *sys.argv[1:]]))
