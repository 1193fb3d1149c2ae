"""spark-submit job: label an ingested MEDS dataset.

    spark-submit etl/label.py --meds <dir> --tasks all --output <dir> [--tasks-dir tasks/]

A thin main over :mod:`ehrfm.labels.cli` (same options as ``ehrfm label``); the session comes from
spark-submit's configuration (``ehrfm.spark.get_spark`` never overrides its master).
"""

from __future__ import annotations

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, and etl/ holds jobs named like stdlib modules
# (etl/tokenize.py shadows ``tokenize``, which pandas needs): import nothing from here.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402

from ehrfm.labels import cli  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Parse the ``ehrfm label`` options and run the job."""
    parser = argparse.ArgumentParser(prog="etl/label.py", description="label tables from tasks/*.yaml (Spark)")
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
