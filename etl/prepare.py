"""spark-submit entry point for ``ehrfm prepare`` (vocabulary + value bins on the train split).

    spark-submit etl/prepare.py --meds <meds dir> --output <tokens dir> [--min-count 5] [--n-bins 20]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, and etl/ holds jobs named like stdlib modules
# (etl/tokenize.py): drop it before any other import so the stdlib ones are found.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402

from ehrfm.prepare import cli  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="etl/prepare.py", description=__doc__)
    cli.add_arguments(parser)
    sys.exit(cli.run(parser.parse_args()))
