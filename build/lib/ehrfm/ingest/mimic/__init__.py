"""MIMIC-IV (hosp/ + icu/ CSV) -> MEDS ingest on Spark (:func:`ehrfm.ingest.mimic.ingest.ingest_mimic`);
the mapping rules live in ``rules.yaml``. Kept import-light so ``ehrfm --help`` stays fast."""
