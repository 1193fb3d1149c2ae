"""Serving: the MLflow pyfunc model (FHIR Bundle in, risks / survival / forecast / RiskAssessment out),
registry helpers (``ehrfm register``) and batch scoring with Spark (``ehrfm score``).

Only this package and :mod:`ehrfm.tracking` import MLflow; :mod:`ehrfm.serve.core` and
:mod:`ehrfm.serve.fhir_io` do not, so the scoring path itself runs without it.
"""
