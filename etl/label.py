"""spark-submit job: label an ingested MEDS dataset.

    spark-submit etl/label.py --root <pipeline root> [--tasks '[readmission_30d]'] [--config label.yaml]

A thin main over ``ehrfm label`` (same flags, from :class:`ehrfm.config.label.LabelConfig` and the Layout);
the session comes from spark-submit's configuration (``ehrfm.spark.get_spark`` never overrides its master).
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
    sys.exit(main(["label", *sys.argv[1:]]))
