"""Serving configs: what a registered model carries (:class:`ServeConfig`, ``serve.json``) and the ``ehrfm
register`` / ``ehrfm score`` stage configs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ehrfm.atomic import OverwriteOption
from ehrfm.config.base import ConfigBase, require
from ehrfm.config.explain import IGSettings
from ehrfm.config.spark import SparkConfig
from ehrfm.config.tokenize import TokenizerConfig


@dataclass
class Limits(ConfigBase):
    """Request limits: bad or huge input gets a 4xx naming the limit, not an out-of-memory server. Every limit
    is checked before the work it bounds (bytes before parsing, JSON shape and resource counts before
    mapping), so a hostile request costs milliseconds."""

    max_request_bytes: int = 32_000_000
    """Largest bundle / events JSON string of one row."""
    max_events: int = 100_000
    """Most events of one patient after mapping."""
    max_patients: int = 256
    """Most rows of one request."""
    max_body_bytes: int = 64_000_000
    """Whole request: the server enforces it while streaming the body; ``predict_frame`` checks the sum of
    all rows' bundle/events text against it too."""
    max_json_depth: int = 64
    """Deepest nesting of one row's JSON (FHIR Bundles nest about 10 levels)."""
    max_json_elements: int = 4_000_000
    """Most JSON values (containers and scalars) in one row's JSON."""
    max_resources: int = 100_000
    """Most entries of one Bundle, counted before any mapping or validation."""
    max_clock_skew_s: int = 300
    """An explicit ``prediction_time`` later than now + this many seconds is refused."""

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_events", "max_patients", "max_body_bytes", "max_json_depth",
                     "max_json_elements", "max_resources"):
            value = getattr(self, name)
            require(isinstance(value, int) and not isinstance(value, bool) and value >= 1, f"limits.{name}",
                    value, "must be a positive integer")
        skew = self.max_clock_skew_s
        require(isinstance(skew, int) and not isinstance(skew, bool) and skew >= 0, "limits.max_clock_skew_s",
                skew, "must be a non-negative integer (seconds)")


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
    strict: bool = False
    """false (default): a rejected resource is left out and the patient scored on the rest (``partial``,
    the rejects listed in ``issues``); true: any rejected resource refuses the patient (422)."""
    explain: bool = False
    """Attach integrated-gradients explanations to every prediction of a binary or time-to-event task
    (off by default: they cost several model passes; a request row's ``explain`` field overrides it)."""
    explain_top_k: int = 5
    """Contributing events listed per prediction (JSON ``explanation`` column, RiskAssessment ``basis``)."""
    explain_ig: IGSettings = field(default_factory=lambda: IGSettings(steps=8, max_steps=32))
    """Integrated-gradients settings of served explanations (bounded cost: 9 nested Clenshaw-Curtis nodes
    first, refined to 17 and 33 while the completeness check asks, so at most 33 gradient evaluations per
    explained task; tokens per row)."""

    def __post_init__(self) -> None:
        require(isinstance(self.strict, bool), "strict", self.strict, "must be true or false")
        require(self.validate in ("full", "none"), "validate", self.validate, "must be 'full' or 'none'")
        require(isinstance(self.explain, bool), "explain", self.explain, "must be true or false")
        require(isinstance(self.explain_top_k, int) and 1 <= self.explain_top_k <= 100, "explain_top_k",
                self.explain_top_k, "must be an integer in [1, 100]")


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
    strict: bool = False
    """The served default for a rejected resource: false scores the rest (partial), true refuses the patient
    (overridable per deployment by $EHRFM_SERVE_STRICT and per request)."""
    explain: bool = False
    """The served default for explanations (``serve.json`` ``explain``): true attaches integrated-gradients
    attributions to every binary / time-to-event prediction (several model passes each); overridable per
    request (a row's ``explain`` field, ``$risk?explain=``)."""
    explain_top_k: int = 5
    """Contributing events listed per explained prediction (``serve.json`` ``explain_top_k``, 1-100)."""

    def __post_init__(self) -> None:
        require(self.max_len is None or self.max_len >= 8, "max_len", self.max_len, "must be >= 8")
        require(bool(self.name.strip()), "name", self.name, "must not be empty")
        # the same checks as ServeConfig's, so a bad flag fails before any packaging work
        require(isinstance(self.explain, bool), "explain", self.explain, "must be true or false")
        require(isinstance(self.explain_top_k, int) and 1 <= self.explain_top_k <= 100, "explain_top_k",
                self.explain_top_k, "must be an integer in [1, 100]")


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
class ScoreConfig(OverwriteOption):
    """``ehrfm score``: batch-score a population with a registered model (Spark); output in the evaluation
    predictions contract."""

    model: str = "models:/ehrfm@champion"
    """MLflow model URI (models:/name@alias, runs:/...) or a local serving/model folder."""
    source: Literal["tokens", "meds", "fhir"] = "tokens"
    """tokens: the task rows of the layout's tokens (their prediction_time); meds: every subject of the
    layout's MEDS dataset at prediction_time; fhir: every FHIR Bundle file (one patient each) under
    ``input``, scored as the server scores it."""
    input: str | None = None
    """source=fhir: folder of Bundle files (``*.json``, ``*.json.gz``, searched recursively); a local path or
    a Hadoop-compatible URI (``hdfs://``, ``s3a://`` ...)."""
    rejects: str | None = None
    """source=fhir: parquet folder of the files that could not be scored (file, status, message); default
    ``<scores>_rejects`` next to the predictions; a local path or a URI."""
    tasks: list[str] = field(default_factory=list)
    """Tasks to score (empty: every task of the model)."""
    splits: list[str] = field(default_factory=list)
    """source=tokens: splits to score (empty: all)."""
    prediction_time: str | None = None
    """source=meds or fhir: one ISO time for everyone (default: each subject's last event, as served)."""
    tracking_uri: str | None = None
    """MLflow store of a models:/ URI (default: $MLFLOW_TRACKING_URI, else the layout's sqlite store)."""
    spark: SparkConfig = field(default_factory=SparkConfig)
    """Spark session settings."""

    def __post_init__(self) -> None:
        require(self.prediction_time is None or self.source in ("meds", "fhir"), "prediction_time",
                self.prediction_time, "only with source=meds or source=fhir")
        require((self.input is not None) == (self.source == "fhir"), "input", self.input,
                "give the folder of Bundle files with source=fhir, and only then")
        require(self.rejects is None or self.source == "fhir", "rejects", self.rejects,
                "only with source=fhir")


@dataclass
class ScoreSummary(ConfigBase):
    """What ``ehrfm score`` wrote."""

    output: str
    """Parquet folder of predictions."""
    rows: list[dict[str, object]]
    """Per task: rows and mean score."""
    seconds: float
    """Wall time."""
    rejects: str | None = None
    """source=fhir: parquet folder of the files that could not be scored (file, status, message)."""
    rejected: int = 0
    """source=fhir: how many files could not be scored."""
