"""``ehrfm explain`` config and summary, and the integrated-gradients settings serving shares with it.

:class:`IGSettings` bounds the cost of one explanation (interpolation steps, refinement cap, tokens per
pass); :class:`ExplainConfig` is the population stage (top codes per task by mean |attribution| on the
held-out rows, with subject-bootstrap CIs). The method itself is documented in ``docs/explain.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ehrfm.atomic import OverwriteOption
from ehrfm.config.base import ConfigBase, require

Quadrature = Literal["clenshaw_curtis", "gauss", "riemann"]


@dataclass
class IGSettings(ConfigBase):
    """Integrated gradients on the summed input embedding: quadrature, completeness check, cost bounds."""

    steps: int = 16
    """Interpolation points between the baseline and the input, the first try: ``steps`` Gauss-Legendre
    nodes or midpoints, ``steps + 1`` Clenshaw-Curtis nodes (both ends included); see docs/explain.md."""
    method: Quadrature = "clenshaw_curtis"
    """clenshaw_curtis: nested nodes on [0, 1] (refining to twice the steps reuses every node computed, so a
    row that needs 33 nodes costs 33 gradient evaluations, not 8 + 16 + 32); gauss: Gauss-Legendre nodes
    and weights (not nested); riemann: the midpoint rule."""
    tolerance: float = 0.01
    """Completeness check: |sum of attributions - (f(x) - f(baseline))| / max(|f(x) - f(baseline)|, 1e-3)
    must not exceed this; rows over it are recomputed with twice the steps."""
    max_steps: int = 128
    """Refinement stops here; a row still over the tolerance is reported (converged=false), not hidden."""
    max_tokens: int = 512
    """Longest row explained (the most recent tokens are kept, as the collator keeps them)."""
    batch_tokens: int = 16_384
    """Interpolated tokens per forward/backward pass (memory bound): points x row length."""

    def __post_init__(self) -> None:
        for name in ("steps", "max_steps", "max_tokens", "batch_tokens"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"ig.{name}",
                    value, "must be a positive integer")
        require(self.max_steps >= self.steps, "ig.max_steps", self.max_steps,
                f"must be >= ig.steps={self.steps}")
        require(0.0 < self.tolerance < 1.0, "ig.tolerance", self.tolerance, "must be in (0, 1)")
        require(self.method in ("clenshaw_curtis", "gauss", "riemann"), "ig.method", self.method,
                "must be clenshaw_curtis, gauss or riemann")


@dataclass
class ExplainConfig(OverwriteOption):
    """``ehrfm explain``: integrated-gradients attributions of a finetuned model over the held-out rows ->
    top codes per task by mean |attribution| with subject-bootstrap CIs (JSON + markdown)."""

    model: str | None = None
    """Finetuned model folder (default: the layout's finetuning run model)."""
    tasks: list[str] = field(default_factory=list)
    """Tasks to explain (empty: every binary and time-to-event task of the model; forecasting has no scalar
    output to attribute)."""
    split: str = "held_out"
    """Split whose task rows are explained."""
    max_rows: int = 500
    """At most this many rows per task (a seeded sample of the split): bounds the cost."""
    top_k: int = 20
    """Codes listed per task."""
    n_boot: int = 200
    """Subject-cluster bootstrap resamples of the 95% CIs (0: point estimates only)."""
    seed: int = 0
    """Seed of the row sample and the bootstrap."""
    ig: IGSettings = field(default_factory=IGSettings)
    """Integrated-gradients settings."""
    progress: bool = True
    """Show a progress bar over rows."""

    def __post_init__(self) -> None:
        for name in ("max_rows", "top_k"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, name, value, "must be a positive integer")
        require(self.n_boot >= 0, "n_boot", self.n_boot, "must be >= 0")
        require(bool(self.split.strip()), "split", self.split, "must not be empty")


@dataclass
class TaskExplainSummary(ConfigBase):
    """Per task: rows explained and how well the completeness check held."""

    task: str
    """Task name."""
    rows: int
    """Rows explained."""
    converged: int
    """Rows whose completeness error is within the tolerance."""
    max_rel_error: float
    """Largest completeness error (relative) over the rows."""
    top_codes: list[str]
    """The top codes by mean |attribution|, best first."""


@dataclass
class ExplainSummary(ConfigBase):
    """What ``ehrfm explain`` wrote."""

    json: str
    """attributions.json (every number)."""
    markdown: str
    """attributions.md (tables)."""
    events: str
    """event_attributions.parquet: one row per (task row, event) with its attribution."""
    tasks: list[TaskExplainSummary]
    """Per task."""
    seconds: float
    """Wall time."""
