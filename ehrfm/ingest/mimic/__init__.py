"""MIMIC-IV (hosp/ + icu/ CSV) -> MEDS ingest on Spark; mapping rules live in ``rules.yaml``."""

from ehrfm.ingest.mimic.ingest import ingest_mimic
from ehrfm.ingest.mimic.rules import load_rules

__all__ = ["ingest_mimic", "load_rules"]
