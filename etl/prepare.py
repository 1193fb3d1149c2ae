"""spark-submit entry point for ``ehrfm prepare`` (vocabulary + value bins on the train split).

    spark-submit etl/prepare.py --meds <meds dir> --output <tokens dir> [--min-count 5] [--n-bins 10]
"""

from __future__ import annotations

import argparse
import sys

from ehrfm.prepare import cli

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="etl/prepare.py", description=__doc__)
    cli.add_arguments(parser)
    sys.exit(cli.run(parser.parse_args()))
