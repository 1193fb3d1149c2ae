"""spark-submit job: batch scoring with a registered model (``ehrfm score``, same flags).

    spark-submit --master local[2] etl/score.py --model models:/ehrfm@champion --root <pipeline root>
    spark-submit etl/score.py --model models:/ehrfm@champion --source meds --meds <MEDS dir> --scores <out
    dir>

Set MLFLOW_TRACKING_URI (or pass --tracking_uri) for a models:/ URI. The Spark session comes from
`ehrfm.spark.get_spark`, which keeps spark-submit's --master and --conf.
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
    sys.exit(main(["score", *sys.argv[1:]]))
