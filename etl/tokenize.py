"""spark-submit entry point for ``ehrfm tokenize`` (token-stream parquet: pretraining and task rows).

    spark-submit etl/tokenize.py --meds <meds dir> --labels <labels dir> --output <tokens dir> [--max-len 2048]
"""

from __future__ import annotations

import argparse
import sys

from ehrfm.tokenize import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="etl/tokenize.py", description=__doc__)
    cli.add_arguments(parser)
    sys.exit(cli.run(parser.parse_args()))
