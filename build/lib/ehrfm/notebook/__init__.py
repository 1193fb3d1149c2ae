"""Helpers of the numbered notebooks in ``notebooks/`` (kept here so the notebooks stay thin):

- :mod:`ehrfm.notebook.pipeline`: the shared, cached pipeline run (synth -> ... -> finetune) in a work folder;
- :mod:`ehrfm.notebook.tables`: decoded token rows, sequence/code statistics, label prevalence;
- :mod:`ehrfm.notebook.embed`: patient embeddings, visit-prefix trajectories, outlier scores (torch);
- :mod:`ehrfm.notebook.evaluation`: report tables, scored rows, Kaplan–Meier per group.

Submodules are imported explicitly so that a notebook pays only for what it uses.
"""
