"""Serving configs: what a registered model carries (:class:`ServeConfig`, ``serve.json``) and the ``ehrfm
register`` / ``ehrfm score`` stage configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ehrfm.config.base import ConfigBase, require
from ehrfm.config.spark import SparkConfig
from ehrfm.config.tokenize import TokenizerConfig


@dataclass
class Limits(ConfigBase):
    """Request limits: bad or huge input gets a 4xx naming the limit, not an out-of-memory server."""

    max_request_bytes: int = 32_000_000
    """Largest bundle / events JSON string of one row."""
    max_events: int = 100_000
    """Most events of one patient after mapping."""
    max_patients: int = 256
    """Most rows of one request."""

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_events", "max_patients"):
            value = getattr(self, name)
            require(isinstance(value, int) and value >= 1, f"limits.{name}", value,
                    "must be a positive integer")


@dataclass
class ServeConfig(ConfigBase):
    """``serve.json`` of a registered model: the tokenizer rules its rows were cut with, limits,
    validation."""

    tokenize: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Tokenizer rules, as recorded with the training tokens; ``tokenize.max_len`` is the row length
    served."""
    limits: Limits = field(default_factory=Limits)
    """Request limits."""
    validate: Literal["full", "none"] = "full"
    """FHIR structural validation of every mapped resource at serving time."""
    model_version: str = ""
    """Filled at registration; goes into RiskAssessment.method."""


@dataclass
class RegisterConfig(ConfigBase):
    """``ehrfm register``: package a finetuned model as a self-contained MLflow pyfunc, register it, set an
    alias."""

    run: str | None = None
    """Finetuned model folder, `ehrfm finetune` output folder, or an MLflow run id (default: the layout's
    finetuning run)."""
    name: str = "ehrfm"
    """Registered model name."""
    alias: str | None = "champion"
    """Alias pointed at the new version (null: none)."""
    experiment: str = "ehrfm-register"
    """Experiment of the packaging run (when the model comes from a folder)."""
    tracking_uri: str | None = None
    """MLflow store (default: $MLFLOW_TRACKING_URI, else the layout's sqlite store <root>/mlflow.db)."""
    max_len: int | None = None
    """Tokens kept per row at serving (default: the max_len recorded with the training tokens)."""
    limits: Limits = field(default_factory=Limits)
    """Request limits of the served model (overridable per deployment by environment variables)."""
    validate: Literal["full", "none"] = "full"
    """FHIR structural validation at serving time."""

    def __post_init__(self) -> None:
        require(self.max_len is None or self.max_len >= 8, "max_len", self.max_len, "must be >= 8")
        require(bool(self.name.strip()), "name", self.name, "must not be empty")


@dataclass
class RegisterSummary(ConfigBase):
    """What ``ehrfm register`` created."""

    name: str
    """Registered model name."""
    version: str
    """New version."""
    alias: str | None
    """Alias set, if any."""
    model_uri: str
    """Logged model URI."""
    run_id: str
    """MLflow run holding the model."""
    tracking_uri: str
    """MLflow store."""
    serve_uri: str
    """URI to serve (``models:/<name>@<alias>`` or ``models:/<name>/<version>``)."""


@dataclass
class ScoreConfig(ConfigBase):
    """``ehrfm score``: batch-score a population with a registered model (Spark); output in the evaluation
    predictions contract."""

    model: str = "models:/ehrfm@champion"
    """MLflow model URI (models:/name@alias, runs:/...) or a local serving/model folder."""
    source: Literal["tokens", "meds"] = "tokens"
    """tokens: the task rows of the layout's tokens (their prediction_time); meds: every subject of the
    layout's
    MEDS dataset at prediction_time."""
    tasks: list[str] = field(default_factory=list)
    """Tasks to score (empty: every task of the model)."""
    splits: list[str] = field(default_factory=list)
    """source=tokens: splits to score (empty: all)."""
    prediction_time: str | None = None
    """source=meds: one ISO time for everyone (default: each subject's last event, as served)."""
    tracking_uri: str | None = None
    """MLflow store of a models:/ URI (default: $MLFLOW_TRACKING_URI, else the layout's sqlite store)."""
    spark: SparkConfig = field(default_factory=SparkConfig)
    """Spark session settings."""

    def __post_init__(self) -> None:
        require(self.prediction_time is None or self.source == "meds", "prediction_time",
                self.prediction_time,
                "only with source=meds")


@dataclass
class ScoreSummary(ConfigBase):
    """What ``ehrfm score`` wrote."""

    output: str
    """Parquet folder of predictions."""
    rows: list[dict[str, object]]
    """Per task: rows and mean score."""
    seconds: float
    """Wall time."""
