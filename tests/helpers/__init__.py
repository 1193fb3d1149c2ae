"""Test-only helpers shared across the test folders (and ``bench/``), kept out of the ``ehrfm`` package.

Imported as ``helpers.<module>``: pytest puts ``tests/`` on ``sys.path`` when it loads ``tests/conftest.py``
(the default ``prepend`` import mode; ``tests/`` itself is not a package). Scripts outside pytest
(``bench/serve.py``) insert ``tests/`` themselves.

- :mod:`helpers.standin`: a stand-in token-stream dataset in the real schema (pretraining/model tests);
- :mod:`helpers.tiny_model`: a tiny random finetuned model / serving folder (serving tests, benchmarks);
- :mod:`helpers.mlflow_server`: ``mlflow models serve`` as a supervised child process (HTTP tests);
- :mod:`helpers.meds`: hand-made MEDS datasets and label tables where the Layout puts them.
"""
