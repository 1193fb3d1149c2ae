"""spark-submit job: FHIR R4 Bundles / NDJSON -> MEDS dataset.

    spark-submit etl/ingest_fhir.py --root <pipeline root> [--input '[bundles/]'] [--validate full]
        [--config ingest.yaml]

A thin main over ``ehrfm ingest fhir`` (same flags, from :class:`ehrfm.config.ingest.FhirIngestConfig`
and the Layout; the dataset is written to the layout's MEDS folder, which may be a URI such as
hdfs:///meds). The session comes from spark-submit's configuration (``ehrfm.spark.get_spark``
never overrides its master).
"""

from __future__ import annotations

import sys

from ehrfm.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", "fhir", *sys.argv[1:]]))
