"""``ehrfm synth`` stage: ``run(SynthConfig, Layout) -> SynthSummary``."""

from __future__ import annotations

from ehrfm.config.synth import SynthConfig, SynthSummary
from ehrfm.layout import Layout


def run(cfg: SynthConfig, layout: Layout) -> SynthSummary:
    """Generate the population into ``layout.synthetic_dir`` (truth: ``layout.truth``); print its summary."""
    from ehrfm.synth.generate import format_summary, generate

    summary = generate(cfg, layout.synthetic_dir)
    n, dt, cpu = cfg.n_patients, max(summary.seconds, 1e-9), max(summary.cpu_seconds, 1e-9)
    print(format_summary(summary))
    # CPU seconds too: on a shared machine wall time overstates the cost
    print(f"wrote {summary.output} in {dt:.1f} s ({n / dt:,.0f} patients/s wall,"
          f" {n / cpu:,.0f} per CPU-second); truth: {summary.truth}")
    return summary
