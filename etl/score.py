"""spark-submit job: batch scoring with a registered model (``ehrfm score``, same flags).

    spark-submit --master local[2] etl/score.py --model models:/ehrfm@champion --root <pipeline root>
    spark-submit etl/score.py --model models:/ehrfm@champion --source meds --meds <MEDS dir> --scores <out
    dir>

Set MLFLOW_TRACKING_URI (or pass --tracking_uri) for a models:/ URI. The Spark session comes from
`ehrfm.spark.get_spark`, which keeps spark-submit's --master and --conf.
"""

from __future__ import annotations

import sys

from ehrfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
