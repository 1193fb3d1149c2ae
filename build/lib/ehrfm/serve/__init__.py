"""Serving: the MLflow pyfunc model (FHIR Bundle in, risks / survival / forecast / RiskAssessment out),
registry helpers (``ehrfm register``) and batch scoring with Spark (``ehrfm score``). A registered model
carries the ehrfm wheel and pinned requirements (:mod:`ehrfm.serve.model_env`); ehrfm imports no
Lightning and no Spark to load and score it (``import mlflow`` itself imports pyspark where it is installed;
the model's own environment has none).

Only this package and :mod:`ehrfm.tracking` import MLflow; :mod:`ehrfm.serve.core` and
:mod:`ehrfm.serve.fhir_io` do not, so the scoring path itself runs without it.
"""
