"""spark-submit entry point for ``ehrfm score`` (batch scoring with a registered model).

    spark-submit --master local[2] etl/score.py --model models:/ehrfm@champion --tokens <tokens dir> --output <dir>
    spark-submit etl/score.py --model models:/ehrfm@champion --meds <MEDS dir> --output <dir>

Set MLFLOW_TRACKING_URI (or pass --tracking-uri) for a models:/ URI. The Spark session comes from
`ehrfm.spark.get_spark`, which keeps spark-submit's --master and --conf.
"""

from __future__ import annotations

import argparse
import os
import sys

# etl/ holds jobs named like stdlib modules: drop this folder from the import path before other imports
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

from ehrfm.serve import score_cli  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="etl/score.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    score_cli.add_arguments(parser)
    sys.exit(score_cli.run(parser.parse_args()))
