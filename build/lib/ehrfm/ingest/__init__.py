"""Ingest: FHIR R4 (``ehrfm.ingest.fhir``) and MIMIC-IV sources -> MEDS events + rejects on disk.

Each source keeps its mapping rules as data; the Spark readers and the one-patient (serving) path
share the same per-record mapping code.
"""
