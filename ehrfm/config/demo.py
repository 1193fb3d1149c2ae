"""``ehrfm demo`` config: the end-to-end pipeline on the embedded defaults (also the notebooks' pipeline)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ehrfm.config.base import ConfigBase, require
from ehrfm.config.spark import SparkConfig

ALL_TASKS = ["readmission_30d", "mortality_inhospital", "mortality_30d_post_discharge", "los_gt_7d",
             "death_1y_tte",
             "next_visit_codes"]


@dataclass
class DemoConfig(ConfigBase):
    """``ehrfm demo``: synthetic FHIR population -> Spark ingest -> labels -> vocabulary/bins -> tokens ->
    tiny
    pretraining -> multitask finetuning -> evaluation beside supervised baselines -> MLflow registry -> one
    served prediction."""

    n_patients: int = 2000
    """Synthetic population size."""
    seed: int = 7
    """Synthetic population seed."""
    fhir: list[str] = field(default_factory=list)
    """Real FHIR R4 bundles / NDJSON (files, folders or globs) instead of the synthetic population."""
    mimic: str | None = None
    """A MIMIC-IV root (hosp/, icu/) instead of the synthetic population."""
    max_time: str | None = None
    """FHIR ingest: date/time after which events are impossible (default: now + 1 day)."""
    tasks: list[str] = field(default_factory=lambda: list(ALL_TASKS))
    """Tasks to label, tokenize and evaluate."""
    finetune_tasks: list[str] = field(default_factory=list)
    """Tasks to finetune (empty: all of tasks)."""
    max_len: int = 512
    """Tokens per row of this pipeline (the demo's size: short rows keep a CPU run to minutes; the tokenizer's
    default is ehrfm.config.tokenize.DEFAULT_MAX_LEN)."""
    pretrain_steps: int = 300
    """Pretraining optimizer steps."""
    finetune_steps: int = 500
    """Finetuning optimizer steps (0: stop after pretraining)."""
    bootstrap: int = 100
    """Bootstrap resamples for the evaluation's confidence intervals."""
    engine: Literal["auto", "spark", "local"] = "auto"
    """Engine of ingest, label, prepare and tokenize (auto: local on this machine, Spark under spark-submit or
    with a non-local spark.master: ehrfm.config.spark.resolve_engine)."""
    evaluate: bool = True
    """Run the evaluation report with the supervised baselines."""
    register: bool = True
    """Register the finetuned model as models:/ehrfm@champion and serve one prediction."""
    fresh: bool = False
    """Delete the pipeline root first."""
    spark: SparkConfig = field(default_factory=SparkConfig)
    """Spark session settings of the Spark stages."""

    def __post_init__(self) -> None:
        require(not (self.fhir and self.mimic), "mimic", self.mimic, "give either fhir or mimic, not both")
        require(self.n_patients >= 20, "n_patients", self.n_patients,
                "need at least 20 patients for three splits")
        require(self.pretrain_steps >= 1, "pretrain_steps", self.pretrain_steps, "must be >= 1")
        require(self.finetune_steps >= 0, "finetune_steps", self.finetune_steps, "must be >= 0")
        require(self.max_len >= 8, "max_len", self.max_len, "must be >= 8")
        require(self.bootstrap >= 0, "bootstrap", self.bootstrap, "must be >= 0")
        require(bool(self.tasks), "tasks", self.tasks, "name at least one task")
        missing = sorted(set(self.finetune_tasks) - set(self.tasks))
        require(not missing, "finetune_tasks", self.finetune_tasks, f"not in tasks: {missing}")

    @property
    def synthetic(self) -> bool:
        """Whether the pipeline generates its own population (no fhir or mimic input)."""
        return not (self.fhir or self.mimic)


@dataclass
class DemoStep(ConfigBase):
    """One step of a demo run."""

    step: str
    """Step title."""
    seconds: float
    """Wall time."""
    status: str
    """ok, or failed (with the error)."""


@dataclass
class DemoSummary(ConfigBase):
    """What ``ehrfm demo`` did."""

    steps: list[DemoStep]
    """Steps in order, up to the first failure."""
    ok: bool
    """Every step succeeded."""
    report: str | None = None
    """The evaluation report (markdown), when written."""
