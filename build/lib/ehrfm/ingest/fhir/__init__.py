"""FHIR R4 (and STU3/R5-shaped) ingest: Bundles and NDJSON -> MEDS events, rejects and a summary.

- :func:`ehrfm.ingest.fhir.bundle.bundle_to_events`: one patient, pure Python (serving).
- :func:`ehrfm.ingest.fhir.spark_ingest.ingest_fhir`: a population with Spark (same mapper).
- :func:`ehrfm.ingest.fhir.mapper.map_resource`: one resource -> events / reject.
- :func:`ehrfm.ingest.fhir.ids.subject_id_for`: Patient logical id -> int64 ``subject_id``.
"""

from ehrfm.ingest.fhir.ids import subject_id_for
from ehrfm.ingest.fhir.mapper import MapContext, map_resource

__all__ = ["MapContext", "map_resource", "subject_id_for"]
