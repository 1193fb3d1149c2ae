"""spark-submit job: label an ingested MEDS dataset.

    spark-submit etl/label.py --root <pipeline root> [--tasks '[readmission_30d]'] [--config label.yaml]

A thin main over ``ehrfm label`` (same flags, from :class:`ehrfm.config.label.LabelConfig` and the Layout);
the session comes from spark-submit's configuration (``ehrfm.spark.get_spark`` never overrides its master).
"""

from __future__ import annotations

import sys

from ehrfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["label", *sys.argv[1:]]))
