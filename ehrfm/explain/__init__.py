"""Attributions of finetuned-model predictions (integrated gradients), aggregated to events and visits.

- :mod:`ehrfm.explain.ig`: integrated gradients on the summed input embedding, with the completeness check;
- :mod:`ehrfm.explain.aggregate`: tokens -> events (code + value-bin token) -> visits, with code, time and
  value carried along;
- :mod:`ehrfm.explain.stage`: ``ehrfm explain``, top codes per task over a population with bootstrap CIs.

Method and caveats: ``docs/explain.md``.
"""
