"""Tokenize stage: per-patient timeline → EHRMamba-style token streams (TOKENS_SCHEMA).

Public API: :func:`tokenize_subject`, :func:`tokenize_for_prediction`, :class:`TokenizerConfig`.
The Spark population path lives in :mod:`ehrfm.tokenize.spark_job`, the one-process one in
:mod:`ehrfm.tokenize.direct`.
"""

from ehrfm.config.tokenize import TokenizerConfig
from ehrfm.tokenize.tokenizer import interval_token, tokenize_for_prediction, tokenize_subject

__all__ = ["TokenizerConfig", "interval_token", "tokenize_for_prediction", "tokenize_subject"]
