"""Synthetic FHIR R4 population with planted, documented risk (see docs/synthetic_population.md).

Public API: :func:`generate` writes a population described by a :class:`SynthConfig` (the config of
``ehrfm synth``, defined in :mod:`ehrfm.config.synth`), :func:`read_truth` / :func:`oracle_auroc` read its
truth table, :func:`simulate` builds one patient in memory.
"""

from ehrfm.config.synth import SynthConfig, SynthSummary
from ehrfm.synth.generate import format_summary, generate
from ehrfm.synth.timeline import simulate
from ehrfm.synth.truth import TRUTH_FILE, TRUTH_SCHEMA, auroc, oracle_auroc, read_truth

__all__ = [
    "TRUTH_FILE",
    "TRUTH_SCHEMA",
    "SynthConfig",
    "SynthSummary",
    "auroc",
    "format_summary",
    "generate",
    "oracle_auroc",
    "read_truth",
    "simulate",
]
