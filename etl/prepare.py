"""spark-submit job: vocabulary and numeric-value bins fitted on the train split of an ingested MEDS dataset.

    spark-submit etl/prepare.py --root <pipeline root> [--meds <meds>] [--tokens <tokens>] [--min_count 5]
        [--n_bins 20] [--tasks '[readmission_30d]'] [--config prepare.yaml]

A thin main over ``ehrfm prepare`` (same flags, from :class:`ehrfm.config.prepare.PrepareConfig` and the
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
    sys.exit(main(["prepare", *sys.argv[1:]]))
