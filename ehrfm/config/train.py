"""``ehrfm pretrain`` and ``ehrfm finetune`` configs and summaries.

The two stages share their sections (``data``, ``optim``, ``trainer``, ``tracking``: one class each); the
defaults of :class:`PretrainConfig` and :class:`FinetuneConfig` are the packaged tiny presets
(``ehrfm/presets/pretrain/tiny.yaml``, ``ehrfm/presets/finetune/tiny.yaml``; a test keeps them equal).

A partial section in a YAML file or a mapping (``optim: {lr: 1e-4}``) changes only the keys it names: the
other keys keep the stage's defaults, as on the command line.

There is one row length: the ``max_len`` the token rows were cut at (``tokens/tokenize.json``). Training
reads it from there; ``model.max_len`` is 0 (= that length) unless set larger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ehrfm.config.base import ConfigBase, build, read_mapping, require
from ehrfm.config.evaluate import PrimaryMetric, ReportConfig
from ehrfm.config.model import ModelConfig

DEFAULT_TTE_EDGES = (0.0, 30.0, 90.0, 180.0, 365.0)
"""Bin edges (days) of the time-to-event heads."""


@dataclass
class DataConfig(ConfigBase):
    """Batching: token budget per micro-batch after padding, length pools, split names."""

    max_tokens: int = 4096
    """Tokens per micro-batch after padding (rows x padded width)."""
    pool_size: int = 1024
    """Rows per length-sorted pool that micro-batches are packed from (larger: less padding, less mixing)."""
    long_rows: Literal["error", "alone"] = "error"
    """A row whose padded length exceeds ``max_tokens``: "error" (refuse the budget) or "alone" (a
    micro-batch of its own: whole-history rows far longer than the row the budget is sized for)."""
    num_workers: int = 0
    """DataLoader worker processes (0: load in the training process)."""
    train_split: str = "train"
    """Split trained on."""
    val_split: str = "tuning"
    """Split validated on (early stopping, best checkpoint)."""

    def __post_init__(self) -> None:
        require(self.max_tokens >= 8, "data.max_tokens", self.max_tokens, "must be >= 8")
        require(self.pool_size >= 1, "data.pool_size", self.pool_size, "must be >= 1")
        require(self.num_workers >= 0, "data.num_workers", self.num_workers, "must be >= 0")


@dataclass
class OptimConfig(ConfigBase):
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``."""

    lr: float = 1e-3
    """Peak learning rate."""
    weight_decay: float = 0.1
    """AdamW weight decay (never on norms, biases, embeddings and SSM parameters)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas [beta1, beta2]."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 20
    """Optimizer steps of linear warmup."""
    min_lr_ratio: float = 0.1
    """Learning rate at the end of the cosine decay, as a fraction of lr."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""

    def __post_init__(self) -> None:
        require(self.lr > 0, "optim.lr", self.lr, "must be > 0")
        require(self.weight_decay >= 0, "optim.weight_decay", self.weight_decay, "must be >= 0")
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "optim.betas", self.betas,
                "must be two numbers in [0, 1)")
        require(self.eps > 0, "optim.eps", self.eps, "must be > 0")
        require(self.warmup_steps >= 0, "optim.warmup_steps", self.warmup_steps, "must be >= 0")
        require(0 <= self.min_lr_ratio <= 1, "optim.min_lr_ratio", self.min_lr_ratio, "must be in [0, 1]")
        require(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, "must be >= 0")


@dataclass
class LossConfig(ConfigBase):
    """Which targets the next-token loss ignores besides [PAD] (always excluded)."""

    exclude_special: bool = False
    """Ignore [CLS] [VS] [VE] [REG] [UNK] [MASK] targets."""
    exclude_interval: bool = False
    """Ignore the interval tokens [W*] [M*] [LT] as targets."""


DEFAULT_QUERY_HORIZONS = (1.0, 7.0, 30.0, 90.0, 365.0)
"""Horizon buckets (days) of the query-conditioned pretraining objective."""


@dataclass
class QueryConfig(ConfigBase):
    """Query-conditioned pretraining (docs/query.md): besides next-token loss, answer randomly sampled
    queries "does any of these codes occur in (cut, cut + horizon]?" at sampled cut points of each row, from
    the row's own future (BCE). ``weight`` 0 turns it off (plain next-token pretraining)."""

    weight: float = 0.0
    """Weight of the query BCE loss beside the next-token loss (0: off, no query head)."""
    cuts_per_row: int = 4
    """Cut points sampled per training row (at event boundaries; the cut's own time is in the prefix)."""
    queries_per_cut: int = 8
    """Queries sampled per cut point."""
    horizons: list[float] = field(default_factory=lambda: list(DEFAULT_QUERY_HORIZONS))
    """Horizon buckets in days (each query uses one)."""
    max_set_size: int = 3
    """Most codes in one query (a code set is a disjunction: any of them)."""
    set_prob: float = 0.25
    """Share of queries that are code sets of 2..max_set_size codes."""
    temperature: float = 0.5
    """Target codes are drawn with probability proportional to count ** temperature (0: uniform)."""
    holdout_mod: int = 6
    """Codes whose stable hash is 0 modulo this are never sampled as targets (held out for zero-shot
    evaluation; encounter codes and MEDS_DEATH are never held out; 0: hold out nothing)."""

    def __post_init__(self) -> None:
        require(self.weight >= 0, "query.weight", self.weight, "must be >= 0 (0 turns the query loss off)")
        require(self.cuts_per_row >= 1, "query.cuts_per_row", self.cuts_per_row, "must be >= 1")
        require(self.queries_per_cut >= 1, "query.queries_per_cut", self.queries_per_cut, "must be >= 1")
        require(len(self.horizons) >= 1 and all(h > 0 for h in self.horizons)
                and list(self.horizons) == sorted(set(self.horizons)), "query.horizons", self.horizons,
                "must be distinct positive days in increasing order")
        require(self.max_set_size >= 1, "query.max_set_size", self.max_set_size, "must be >= 1")
        require(0 <= self.set_prob <= 1, "query.set_prob", self.set_prob, "must be in [0, 1]")
        require(self.temperature >= 0, "query.temperature", self.temperature, "must be >= 0")
        require(self.holdout_mod >= 0, "query.holdout_mod", self.holdout_mod, "must be >= 0")


@dataclass
class TrainerConfig(ConfigBase):
    """Lightning Trainer settings, the seed and resuming."""

    seed: int = 0
    """Seed of the weights, the data order and dropout (a resumed run continues the same streams)."""
    resume: str | None = None
    """Continue a run: last (or auto) = from <run>/checkpoints/last.ckpt when present, or a .ckpt path;
    null = start fresh (an existing last.ckpt is then an error)."""
    max_steps: int = 300
    """Optimizer steps."""
    accumulate_grad_batches: int = 1
    """Micro-batches per optimizer step."""
    val_check_interval: int = 100
    """Validate every this many optimizer steps (and at the end)."""
    limit_val_batches: float = 1.0
    """Fraction (<= 1.0) or number of validation batches per validation."""
    checkpoint_every_n_steps: int = 100
    """Write checkpoints/last.ckpt every this many optimizer steps."""
    accelerator: str = "auto"
    """Lightning accelerator: auto, cpu, gpu, ..."""
    devices: int | str | list[int] = "auto"
    """Lightning devices: auto, a count, or a list of device indices."""
    strategy: str = "auto"
    """Lightning strategy: auto, ddp, ..."""
    num_nodes: int = 1
    """Machines (with torchrun / a cluster launcher)."""
    precision: str = "auto"
    """auto = bf16-mixed on a CUDA GPU, 32-true elsewhere; or any Lightning precision."""
    log_every_n_steps: int = 10
    """Log training metrics every this many optimizer steps."""
    progress_bar: bool = True
    """Show Lightning's progress bar."""

    def __post_init__(self) -> None:
        for name in ("max_steps", "accumulate_grad_batches", "val_check_interval", "checkpoint_every_n_steps",
                     "num_nodes", "log_every_n_steps"):
            value = getattr(self, name)
            require(value >= 1, f"trainer.{name}", value, "must be >= 1")
        require(self.limit_val_batches >= 0, "trainer.limit_val_batches", self.limit_val_batches,
                "must be >= 0")
        require(self.resume is None or bool(self.resume), "trainer.resume", self.resume,
                "last, a checkpoint path, or null")


@dataclass
class TrackingConfig(ConfigBase):
    """MLflow tracking. The store is ``$MLFLOW_TRACKING_URI`` when set, else the pipeline root's embedded
    ``mlflow.db`` (artifacts in ``mlartifacts/``)."""

    enabled: bool = True
    """Track the run in MLflow (params, metrics, model and checkpoint artifacts)."""
    experiment: str = "ehrfm"
    """MLflow experiment name."""
    run_name: str | None = None
    """MLflow run name (default: pretrain-<backbone> / finetune-<model_name>)."""


@dataclass
class HeadsConfig(ConfigBase):
    """Task heads: one per task unless ``shared_head`` (binary tasks); time-to-event bin edges in days."""

    shared_head: bool = False
    """One head shared by every binary task (the task prompt token tells them apart)."""
    dropout: float = 0.1
    """Dropout before the heads, in [0, 1)."""
    tte_edges_days: list[float] = field(default_factory=lambda: list(DEFAULT_TTE_EDGES))
    """Time-to-event: increasing bin edges in days, starting at 0 (discrete-time hazard per bin)."""

    def __post_init__(self) -> None:
        require(0 <= self.dropout < 1, "heads.dropout", self.dropout, "must be in [0, 1)")
        edges = self.tte_edges_days
        increasing = all(a < b for a, b in zip(edges, edges[1:], strict=False))
        require(len(edges) >= 2 and edges[0] == 0 and increasing, "heads.tte_edges_days", edges,
                "must be increasing, start at 0 and have at least two edges")


@dataclass
class AdaptConfig(ConfigBase):
    """Local adaptation: what is trained, and on how many labelled rows."""

    mode: Literal["full", "lora"] = "full"
    """full = train everything; lora = freeze the backbone and train LoRA matrices on its projections plus the
    heads."""
    lora_rank: int = 8
    """LoRA rank."""
    lora_alpha: float = 16.0
    """LoRA scale numerator (the update is scaled by lora_alpha / lora_rank)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input, in [0, 1)."""
    few_shot: int = 0
    """Labelled training rows per task (stratified by label/event, seeded); 0 = all."""
    few_shot_seed: int = 0
    """Seed of the few-shot row draw."""

    def __post_init__(self) -> None:
        require(self.lora_rank >= 1, "adapt.lora_rank", self.lora_rank, "must be >= 1")
        require(self.lora_alpha > 0, "adapt.lora_alpha", self.lora_alpha, "must be > 0")
        require(0 <= self.lora_dropout < 1, "adapt.lora_dropout", self.lora_dropout, "must be in [0, 1)")
        require(self.few_shot >= 0, "adapt.few_shot", self.few_shot, "must be >= 0")


@dataclass
class CalibrationConfig(ConfigBase):
    """Post-hoc calibration fitted on the tuning split after finetuning, saved with the model
    (``calibration.json``) and applied to every prediction (see :mod:`ehrfm.train.calibration`)."""

    method: Literal["auto", "platt", "isotonic", "temperature", "none"] = "auto"
    """auto = per task: binary none/Platt/isotonic by cross-validated tuning log loss, tte Platt or none per
    horizon, forecast temperature; platt / isotonic = that map for binary tasks (tte: Platt per horizon) and
    temperature for forecasts; temperature = forecasts only (binary and tte raw); none = raw scores."""
    min_positives: int = 50
    """auto: isotonic is a candidate only with at least this many tuning positives (and negatives)."""
    folds: int = 5
    """auto: subject-grouped cross-validation folds on the tuning split that compare the methods."""
    seed: int = 0
    """Seed of the fold assignment."""

    def __post_init__(self) -> None:
        require(self.min_positives >= 1, "calibration.min_positives", self.min_positives, "must be >= 1")
        require(self.folds >= 2, "calibration.folds", self.folds, "must be >= 2")


def _tiny_model() -> ModelConfig:
    return ModelConfig(backbone="mamba2", d_model=64, n_layers=2, dropout=0.1, d_state=16, d_conv=4, expand=2,
                       headdim=16, chunk_size=64, ngroups=1, n_heads=4, mlp_ratio=4, use_code_counts=True,
                       use_value_deltas=True)


@dataclass
class PretrainConfig(ConfigBase):
    """``ehrfm pretrain``: next-token pretraining on the tokens' pretraining rows (Lightning, MLflow)."""

    model: ModelConfig = field(default_factory=_tiny_model)
    """The model's shape (default: the tiny pretrain preset's, Mamba-2). A model preset replaces it:
    `--model <preset.yaml>` on the command line or `model: <preset.yaml>` in a --config file (the packaged
    ones are ehrfm/presets/model/*.yaml; PretrainConfig.from_dict/load also take a preset name: `model:
    small`); `--model.<field>` flags win over the file. vocab_size comes from the vocabulary (leave it 0) and
    max_len from the tokens (0, or larger than the tokens' max_len)."""
    data: DataConfig = field(default_factory=lambda: DataConfig(max_tokens=2048))
    """Batching."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))
    """Optimizer and learning-rate schedule."""
    loss: LossConfig = field(default_factory=LossConfig)
    """Targets the next-token loss ignores."""
    query: QueryConfig = field(default_factory=QueryConfig)
    """Query-conditioned pretraining objective (off by default: ``query.weight`` 0)."""
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(
        max_steps=150, val_check_interval=50, checkpoint_every_n_steps=50))
    """Steps, validation, checkpoints, devices, seed, resume."""
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="ehrfm-pretrain"))
    """MLflow tracking."""

    def __post_init__(self) -> None:
        require(self.model.vocab_size == 0, "model.vocab_size", self.model.vocab_size,
                "comes from the vocabulary file (tokens/vocab.json); leave it 0")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> PretrainConfig:
        """As :meth:`ConfigBase.from_dict`; a string ``model`` is a model preset: a packaged name
        (``small``) or a YAML path, read over the default model."""
        if isinstance(data, Mapping) and isinstance(data.get("model"), str | Path):
            from ehrfm.resources import preset_path

            data = {**data, "model": read_mapping(preset_path("model", data["model"]))}
        return build(cls, data)


@dataclass
class FinetuneConfig(ConfigBase):
    """``ehrfm finetune``: multitask prompted finetuning of the pretrained model on the tokens' task rows,
    predictions on the tuning and held-out splits, optionally the evaluation report."""

    tasks: list[str] = field(default_factory=list)
    """Tasks to finetune (one head each, rows in tokens/tasks/<task>/); empty = every tokenized task."""
    task_weights: dict[str, float] = field(default_factory=dict)
    """Relative sampling weight per task (missing = 1: every task equally often)."""
    monitor: Literal["loss", "auroc"] = "auroc"
    """Early stopping and best.ckpt follow the mean tuning loss, or the mean tuning AUROC (C-index for
    tte)."""
    patience: int = 4
    """Validations without improvement before stopping (0: never stop early)."""
    pretrained: str | None = None
    """The pretrained model to start from: a model folder or an `ehrfm pretrain` run folder (default: the
    layout's pretraining run). Lets several finetuning runs (--runs elsewhere) share one pretraining."""
    model_name: str | None = None
    """The predictions' model column (default ehrfm_<backbone>)."""
    topk: int = 10
    """Forecast tasks: codes per prediction."""
    rollout_steps: int = 0
    """Forecast tasks: 0 = the first-step LM distribution over diagnosis codes; n = plus a greedy rollout."""
    data: DataConfig = field(default_factory=DataConfig)
    """Batching."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.01,
                                                                   betas=[0.9, 0.98]))
    """Optimizer and learning-rate schedule."""
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(
        max_steps=300, val_check_interval=50, checkpoint_every_n_steps=50))
    """Steps, validation, checkpoints, devices, seed, resume."""
    tracking: TrackingConfig = field(default_factory=lambda: TrackingConfig(experiment="ehrfm-finetune"))
    """MLflow tracking (nested under the pretraining run when it was tracked)."""
    heads: HeadsConfig = field(default_factory=HeadsConfig)
    """Task heads."""
    adapt: AdaptConfig = field(default_factory=AdaptConfig)
    """Full finetuning or LoRA, all rows or few-shot."""
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    """Post-hoc calibration on the tuning split (method auto | platt | isotonic | temperature | none)."""
    evaluate: bool = False
    """Also write the evaluation report of the held-out predictions (labels and MEDS from the layout) into the
    evaluation folder and log it to the MLflow run."""
    truth: str | None = None
    """With evaluate: synthetic truth table for oracle rows; default:
    <synthetic>/truth/index_events.parquet when it exists."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """With evaluate: bootstrap, thresholds, subgroups and which baselines to fit beside the model."""

    def __post_init__(self) -> None:
        for task, w in self.task_weights.items():
            require(w >= 0, f"task_weights.{task}", w, "must be a number >= 0")
        require(self.patience >= 0, "patience", self.patience, "must be >= 0")
        require(self.topk >= 1, "topk", self.topk, "must be >= 1")
        require(self.rollout_steps >= 0, "rollout_steps", self.rollout_steps, "must be >= 0")


@dataclass
class PretrainSummary(ConfigBase):
    """What ``ehrfm pretrain`` did: steps, losses, timing, sizes, where the model went."""

    global_step: int
    """Optimizer steps taken (in all, a resumed run included)."""
    train_loss: float | None
    """Last logged training loss."""
    val_loss: float | None
    """Last validation loss (token-weighted)."""
    val_ppl: float | None
    """Last validation perplexity."""
    seconds: float
    """Wall time of fitting."""
    parameters: int
    """Trainable parameters."""
    train_rows: int
    """Pretraining rows of the train split."""
    val_rows: int
    """Pretraining rows of the validation split."""
    backbone: str
    """Backbone trained."""
    max_len: int
    """The model's max_len (the tokens' unless set larger)."""
    model_dir: str
    """The saved model (config.yaml, model.pt, vocab.json)."""
    resumed_from: str | None = None
    """Checkpoint the run continued from."""
    mlflow_run_id: str | None = None
    """MLflow run (None when tracking is off)."""
    global_rank: int = 0
    """Rank of the process that wrote this (under DDP only rank zero reports)."""


@dataclass
class FinetuneSummary(ConfigBase):
    """What ``ehrfm finetune`` did: rows, steps, tuning metrics, where the model and predictions went."""

    tasks: list[str]
    """Tasks finetuned."""
    global_step: int
    """Optimizer steps taken."""
    seconds: float
    """Wall time of fitting."""
    mode: str
    """full or lora."""
    few_shot: int
    """Labelled training rows per task (0 = all)."""
    train_rows: dict[str, int]
    """Training rows per task."""
    tuning_rows: dict[str, int]
    """Tuning rows per task."""
    trainable_parameters: int
    """Parameters trained (heads included)."""
    lora_parameters: int
    """Of which LoRA matrices."""
    val_metrics_at_best: dict[str, float]
    """Validation metrics logged last (val_loss, val_auroc/<task>, ...)."""
    tuning: dict[str, dict[str, float]]
    """Per task: n, positives and AUROC (binary) / C-index (tte) / recall@k (forecast) on the tuning split,
    from the written predictions."""
    model_name: str
    """The predictions' model column."""
    max_len: int
    """Row length trained and predicted at (the tokens' max_len)."""
    model_dir: str
    """The finetuned model folder."""
    predictions: str
    """predictions.parquet (tuning and held-out splits, evaluation contract)."""
    mlflow_run_id: str | None = None
    """MLflow run (None when tracking is off)."""
    mlflow_parent_run_id: str | None = None
    """The pretraining run it is nested under."""
    report: list[PrimaryMetric] = field(default_factory=list)
    """With evaluate: held-out primary metric per task and model."""
    calibration: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per task: the calibration method in use and what its fit saw on the tuning split
    (model/calibration.json)."""
