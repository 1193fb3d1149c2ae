"""``ehrfm evaluate`` config and summary, and the report/baseline settings it shares with ``ehrfm finetune``.

:class:`ReportConfig` is recorded verbatim in ``report.json`` (``"config"``); :class:`BaselineConfig` holds
the knobs of the supervised count-feature baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ehrfm.config.base import ConfigBase, require

ThresholdRule = Literal["youden", "max_f1", "fixed"]
BINARY_BASELINES = ("lr", "hgb")
"""Baselines of binary tasks: logistic regression, histogram gradient boosting."""
TTE_BASELINES = ("cox", "rsf")
"""Baselines of time-to-event tasks: ridge CoxPH, random survival forest."""


@dataclass
class ReportConfig(ConfigBase):
    """Evaluation settings (recorded in report.json)."""

    n_boot: int = 200
    """Subject-cluster bootstrap resamples for the 95% CIs (0: point estimates only)."""
    seed: int = 0
    """Seed of the bootstrap resampling."""
    threshold_rule: ThresholdRule = "youden"
    """How the binary decision threshold is chosen on the tuning split (fixed: 0.5)."""
    ece_bins: int = 10
    """Equal-mass bins of the expected calibration error and reliability diagram."""
    k: int = 10
    """Forecasting: codes per prediction scored (precision@k, recall@k)."""
    horizons: list[float] | None = None
    """Time-to-event: horizons (days) of the time-dependent AUC; default: the 25/50/75% quantiles of the
    evaluated event times."""
    eval_split: str = "held_out"
    """Split the metrics are reported on."""
    subgroup_min_n: int = 50
    """Subgroups with fewer rows are flagged tiny."""
    subgroup_min_pos: int = 10
    """Subgroups with fewer positives (or negatives) are flagged tiny."""
    baselines: list[str] = field(default_factory=list)
    """Supervised baselines fitted beside the model: any of lr, hgb (binary), cox, rsf (time-to-event);
    forecast tasks get the frequency baseline whenever any is asked for."""

    def __post_init__(self) -> None:
        require(self.n_boot >= 0, "report.n_boot", self.n_boot, "must be >= 0")
        require(self.ece_bins >= 1, "report.ece_bins", self.ece_bins, "must be >= 1")
        require(self.k >= 1, "report.k", self.k, "must be >= 1")
        require(self.subgroup_min_n >= 0, "report.subgroup_min_n", self.subgroup_min_n, "must be >= 0")
        require(self.subgroup_min_pos >= 0, "report.subgroup_min_pos", self.subgroup_min_pos, "must be >= 0")
        known = BINARY_BASELINES + TTE_BASELINES
        unknown = [b for b in self.baselines if b not in known]
        require(not unknown, "report.baselines", self.baselines,
                f"unknown {unknown}; choose from {list(known)}")


@dataclass
class BaselineConfig(ConfigBase):
    """Knobs of the count-feature baselines (defaults sized for ~10k rows on a laptop)."""

    windows_days: tuple[float | None, ...] = (30.0, 365.0, None)
    """Look-back windows (days) of the code counts; null = the whole history."""
    min_count: int = 5
    """Codes seen in fewer train rows are dropped."""
    max_codes: int = 500
    """At most this many codes (the most frequent) become count features."""
    lr_cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    """Logistic regression: inverse L2 strengths tried (picked by tuning-split AUROC)."""
    hgb_max_iter: int = 200
    """Gradient boosting: most boosting iterations (early stopping on the tuning split)."""
    cox_alpha: float = 1.0
    """CoxPH: ridge penalty."""
    surv_max_features: int = 100
    """Survival baselines: the most frequent features kept."""
    rsf_trees: int = 50
    """Random survival forest: trees."""
    rsf_min_leaf: int = 10
    """Random survival forest: minimum samples per leaf."""
    forecast_k: int = 10
    """Frequency baseline: codes predicted."""
    grid_points: int = 25
    """Survival baselines: points of the predicted-survival grid."""
    seed: int = 0
    """Seed of the randomized baselines."""

    def __post_init__(self) -> None:
        require(self.min_count >= 1, "baseline.min_count", self.min_count, "must be >= 1")
        require(self.max_codes >= 1, "baseline.max_codes", self.max_codes, "must be >= 1")
        require(len(self.lr_cs) >= 1 and all(c > 0 for c in self.lr_cs), "baseline.lr_cs", self.lr_cs,
                "must be one or more positive numbers")
        require(self.grid_points >= 2, "baseline.grid_points", self.grid_points, "must be >= 2")


@dataclass
class EvaluateConfig(ConfigBase):
    """``ehrfm evaluate``: model predictions and/or supervised baselines on the label tables -> report."""

    tasks: list[str] = field(default_factory=list)
    """Tasks to evaluate (label tables <labels>/<task>.parquet); empty = every label table."""
    predictions: str | None = None
    """Model predictions parquet (the ehrfm.evaluate contract); default: the finetuning run's
    predictions.parquet when it exists plus every finished ``ehrfm simulate`` run's, else baselines only."""
    truth: str | None = None
    """Synthetic truth table (oracle AUROC rows); default: <synthetic>/truth/index_events.parquet when it
    exists."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """Metrics, CIs, thresholds, subgroups and which baselines to fit."""
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    """Settings of the supervised baselines."""
    progress: bool = True
    """Show a progress bar over tasks."""


@dataclass
class PrimaryMetric(ConfigBase):
    """The primary metric of one (task, model) on the evaluated split: AUROC, Harrell's C, else the first."""

    task: str
    """Task name."""
    model: str
    """Model name (baselines: baseline_*)."""
    metric: str
    """Metric name (auroc, harrell_c, precision@10, ...)."""
    n: int
    """Evaluated rows."""
    value: float | None
    """Point estimate (None when undefined on these rows)."""
    ci_low: float | None = None
    """Lower end of the 95% bootstrap CI."""
    ci_high: float | None = None
    """Upper end of the 95% bootstrap CI."""


@dataclass
class EvaluateSummary(ConfigBase):
    """What ``ehrfm evaluate`` wrote: the report files and the primary metric per task and model."""

    report_json: str
    """report.json (every number)."""
    report_md: str
    """report.md (tables, plots)."""
    tasks: list[str]
    """Tasks evaluated."""
    primary: list[PrimaryMetric]
    """Primary metric per (task, model)."""
    prediction_tasks_without_labels: list[str] = field(default_factory=list)
    """Tasks present in the predictions that have no label table (not evaluated)."""
