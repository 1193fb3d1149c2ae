"""spark-submit entry point for ``ehrfm tokenize`` (token-stream parquet: pretraining and task rows).

    spark-submit etl/tokenize_job.py --meds <meds dir> --labels <labels dir> --output <tokens dir> [--max-len 2048]
"""

from __future__ import annotations

import sys

# This file is named like the stdlib `tokenize` module; run as a script its folder is sys.path[0], where it
# would shadow the stdlib module for every later import (numpy, inspect, ...). Drop that entry first.
from pathlib import Path  # noqa: E402

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402

from ehrfm.tokenize import cli  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="etl/tokenize_job.py", description=__doc__)
    cli.add_arguments(parser)
    sys.exit(cli.run(parser.parse_args()))
