"""``ehrfm serve``: a hardened HTTP server for registered ehrfm models.

One front process (Starlette on uvicorn: limits, auth, logs, metrics; it never parses a body) and N
supervised scoring processes (:mod:`~ehrfm.serve.server.pool`) that parse, validate and score through the
same :func:`ehrfm.serve.pyfunc.predict_frame` as the MLflow pyfunc and Spark scoring.
"""
