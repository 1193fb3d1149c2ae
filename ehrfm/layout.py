"""``Layout``: the folders and files of one pipeline root — the only place their names are spelled.

A pipeline root holds every stage's output::

    <root>/synthetic/                 ehrfm synth (FHIR NDJSON + truth/index_events.parquet)
    <root>/meds/                      ehrfm ingest (MEDS: data/, metadata/, rejects/, summary.json)
    <root>/labels/<task>.parquet      ehrfm label (MEDS label file; + <task>.extra.parquet, tasks.json)
    <root>/tokens/                    ehrfm prepare (vocab.json, bins.json)
                                      + ehrfm tokenize (pretrain/, tasks/<task>/, tokenize.json)
    <root>/runs/pretrain|finetune/    ehrfm pretrain / finetune (model/, checkpoints/, predictions.parquet)
    <root>/runs/simulate/<model>/     ehrfm simulate (predictions.parquet, summary.json)
    <root>/evaluation/                ehrfm evaluate (report.json, report.md, plots/)
                                      + ehrfm explain (explanations/: attributions.json|.md, events)
    <root>/scores/                    ehrfm score
    <root>/mlflow.db, mlartifacts/    the embedded MLflow store (when $MLFLOW_TRACKING_URI is unset)

Each top-level folder can be pointed elsewhere (``--meds /data/mimic_meds``): the fields are the CLI's
``--root --synthetic --meds --labels --tokens --runs --evaluation --scores``. A MEDS folder on its own (the
input of a MEDS tool) is described by :class:`MedsPaths`, a tokens folder by :class:`TokenPaths`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ehrfm.config.base import ConfigBase, ConfigError

# No pyarrow / Spark names here, not even under TYPE_CHECKING: the CLI builds its --help from the Layout
# dataclass, and jsonargparse resolves a module's TYPE_CHECKING imports (tests/test_cli.py checks that
# --help loads no heavy library). MedsPaths' readers are typed precisely in ehrfm.meds_files.

# Names inside a MEDS folder, relative to its root (posix): MedsPaths joins them to a Path; code that writes
# to a URI (hdfs://, s3://, where a Path would collapse "//") joins them to the URI string.
MEDS_DATA = "data"
MEDS_METADATA = "metadata"
MEDS_DATASET_JSON = f"{MEDS_METADATA}/dataset.json"
MEDS_CODES = f"{MEDS_METADATA}/codes.parquet"
MEDS_SUBJECT_SPLITS = f"{MEDS_METADATA}/subject_splits.parquet"
MEDS_SUBJECT_IDS = f"{MEDS_METADATA}/subject_ids.parquet"
MEDS_REJECTS = "rejects"
MEDS_SUMMARY = "summary.json"
# Completion marker of a scores folder (``ehrfm score``; also in its rejects folder): written last, with the
# ScoreSummary; "_"-prefixed so Spark and pyarrow readers of the parquet folder skip it.
SCORES_MARKER = "_score.json"
# Names inside a labels folder: ``<task>.parquet`` (a MEDS label file; a folder of parts in outputs of
# older versions) and, for time-to-event and forecast tasks, its sidecar ``<task>.extra.parquet``.
LABEL_SUFFIX = ".parquet"
LABEL_EXTRAS_SUFFIX = ".extra.parquet"
LABEL_KINDS_JSON = "tasks.json"
LABEL_SUMMARY_JSON = "summary.json"
# Names inside a tokens folder (``ehrfm prepare`` + ``ehrfm tokenize``); tokenize.json: its completion marker.
TOKENS_VOCAB = "vocab.json"
TOKENS_BINS = "bins.json"
TOKENS_PREPARE = "prepare.json"
TOKENS_META = "tokenize.json"
TOKENS_PRETRAIN = "pretrain"
TOKENS_TASKS = "tasks"
# Completion marker of the explanations folder (``ehrfm explain``), written last.
EXPLAIN_JSON = "attributions.json"
# Names inside a synthetic population folder (``ehrfm synth``), relative to it.
SYNTH_TRUTH = "truth/index_events.parquet"
SYNTH_SUMMARY = "truth/summary.yaml"


def local_path(value: str) -> Path:
    """A folder option as an absolute local path: a ``file:`` URI (``file:///x``, ``file:/x``,
    ``file://localhost/x``, percent-encoded as ``Path.as_uri()`` writes it) becomes its path; a relative path
    is taken from the driver's current folder (never an executor's). A remote URI (``hdfs://``, ``s3a://``) is
    refused with a :class:`ConfigError` naming it: a step that needs a local folder cannot take one, and a
    ``Path`` would silently collapse ``//`` into a relative folder; steps that take URIs read the
    ``*_uri`` accessors of :class:`Layout`."""
    from ehrfm import storage

    if storage.is_remote(value):
        raise ConfigError(f"{value!r}: this step needs a local folder here, not a {storage.scheme(value)}:// "
                          "URI (ingest, label, prepare, tokenize and score take URIs; training, evaluation "
                          "and serving read local folders)")
    return Path(storage.local_path(value))


@dataclass(frozen=True)
class MedsPaths:
    """Files of a MEDS dataset folder (MEDS 0.4 layout plus ehrfm's rejects and summary)."""

    root: Path

    @property
    def data(self) -> Path:
        """``data/``: event shards, ``data/<split>/<n>.parquet`` (or flat ``data/*.parquet`` from older ehrfm
        and other tools): read them with :meth:`data_files`, :meth:`read_table` or :meth:`read_spark`, which
        take both layouts."""
        return self.root / MEDS_DATA

    def data_files(self) -> list[str]:
        """The event files under ``data/`` in either layout (:func:`ehrfm.meds_files.meds_data_files`)."""
        from ehrfm.meds_files import meds_data_files

        return meds_data_files(self.root)

    def read_table(self, columns: list[str] | None = None, filter: Any = None) -> Any:
        """The events as one Arrow table (:func:`ehrfm.meds_files.read_meds_table`)."""
        from ehrfm.meds_files import read_meds_table

        return read_meds_table(self.root, columns, filter)

    def read_spark(self, spark: Any) -> Any:
        """The events as a Spark DataFrame (:func:`ehrfm.meds_files.read_meds_spark`)."""
        from ehrfm.meds_files import read_meds_spark

        return read_meds_spark(spark, self.root)

    @property
    def metadata(self) -> Path:
        """``metadata/``."""
        return self.root / MEDS_METADATA

    @property
    def dataset_json(self) -> Path:
        """``metadata/dataset.json`` (MEDS dataset metadata)."""
        return self.root / MEDS_DATASET_JSON

    @property
    def codes(self) -> Path:
        """``metadata/codes.parquet`` (every code in data, with descriptions)."""
        return self.root / MEDS_CODES

    @property
    def subject_splits(self) -> Path:
        """``metadata/subject_splits.parquet`` (subject_id, split)."""
        return self.root / MEDS_SUBJECT_SPLITS

    @property
    def subject_ids(self) -> Path:
        """``metadata/subject_ids.parquet`` (subject_id, source_id)."""
        return self.root / MEDS_SUBJECT_IDS

    @property
    def rejects(self) -> Path:
        """``rejects/``: input records that did not become events, with reasons."""
        return self.root / MEDS_REJECTS

    @property
    def summary(self) -> Path:
        """``summary.json``: per-source in / mapped / rejected / skipped counts."""
        return self.root / MEDS_SUMMARY


@dataclass(frozen=True)
class TokenPaths:
    """Files of a tokens folder (``ehrfm prepare`` + ``ehrfm tokenize``)."""

    root: Path

    @property
    def vocab(self) -> Path:
        """``vocab.json``."""
        return self.root / TOKENS_VOCAB

    @property
    def bins(self) -> Path:
        """``bins.json``."""
        return self.root / TOKENS_BINS

    @property
    def prepare_json(self) -> Path:
        """``prepare.json``: config and summary of ``ehrfm prepare``."""
        return self.root / TOKENS_PREPARE

    @property
    def meta(self) -> Path:
        """``tokenize.json``: the tokenizer config (``max_len`` of these rows), tasks and summary."""
        return self.root / TOKENS_META

    @property
    def pretrain(self) -> Path:
        """``pretrain/``: one row per subject."""
        return self.root / TOKENS_PRETRAIN

    @property
    def tasks(self) -> Path:
        """``tasks/``: one folder per task."""
        return self.root / TOKENS_TASKS

    def task(self, name: str) -> Path:
        """``tasks/<name>/``: one row per label."""
        return self.tasks / name


@dataclass(frozen=True)
class RunPaths:
    """Files of a training run folder (``ehrfm pretrain`` / ``ehrfm finetune``)."""

    root: Path

    @property
    def model(self) -> Path:
        """``model/``: weights, model config, vocabulary (what finetune, register and serving read)."""
        return self.root / "model"

    @property
    def checkpoints(self) -> Path:
        """``checkpoints/``: Lightning checkpoints (``last.ckpt``, ``best.ckpt``)."""
        return self.root / "checkpoints"

    @property
    def predictions(self) -> Path:
        """``predictions.parquet``: held-out predictions of a finetuned model."""
        return self.root / "predictions.parquet"

    @property
    def config(self) -> Path:
        """``run_config.yaml``: the run's stage config (``--config`` of it repeats the run)."""
        return self.root / "run_config.yaml"

    @property
    def summary(self) -> Path:
        """``summary.json``: the run's summary (steps, losses, rows, MLflow run id)."""
        return self.root / "summary.json"


@dataclass(frozen=True)
class Layout(ConfigBase):
    """Where each stage of one pipeline reads and writes (defaults: fixed names under ``root``)."""

    root: str = "."
    """Pipeline root; every folder below defaults to a fixed name inside it."""
    synthetic: str | None = None
    """Synthetic FHIR population (default <root>/synthetic)."""
    meds: str | None = None
    """MEDS dataset (default <root>/meds)."""
    labels: str | None = None
    """Label tables, one <task>.parquet each (default <root>/labels)."""
    tokens: str | None = None
    """Vocabulary, bins and token streams (default <root>/tokens)."""
    runs: str | None = None
    """Training runs: pretrain/ and finetune/ (default <root>/runs)."""
    evaluation: str | None = None
    """Evaluation report (default <root>/evaluation)."""
    scores: str | None = None
    """Batch scores of `ehrfm score` (default <root>/scores)."""

    def _dir(self, override: str | None, name: str) -> Path:
        # absolute: Spark executors (and pyarrow writers on them) run in their own working folders
        return local_path(override) if override else self.root_dir / name

    def _uri(self, override: str | None, name: str) -> str:
        # a URI kept intact (a Path collapses "hdfs:///x" to "hdfs:/x"), a local folder made absolute
        from ehrfm import storage

        return storage.normalize(override) if override else storage.join(storage.normalize(self.root), name)

    @property
    def root_dir(self) -> Path:
        """The pipeline root as an absolute path (relative roots are taken from the current folder)."""
        return local_path(self.root)

    @property
    def synthetic_dir(self) -> Path:
        """Folder of the synthetic FHIR population."""
        return self._dir(self.synthetic, "synthetic")

    @property
    def truth(self) -> Path:
        """Ground truth of the synthetic population (``truth/index_events.parquet``)."""
        return self.synthetic_dir / SYNTH_TRUTH

    @property
    def meds_uri(self) -> str:
        """The MEDS dataset folder as a string that keeps a URI intact (``hdfs:///meds``: a Path collapses
        ``//``), a local folder as an absolute path: what the stages that take URIs read and write."""
        return self._uri(self.meds, "meds")

    @property
    def labels_uri(self) -> str:
        """The labels folder, URI kept intact (see :attr:`meds_uri`)."""
        return self._uri(self.labels, "labels")

    @property
    def tokens_uri(self) -> str:
        """The tokens folder, URI kept intact (see :attr:`meds_uri`)."""
        return self._uri(self.tokens, "tokens")

    @property
    def scores_uri(self) -> str:
        """The scores folder of ``ehrfm score``, URI kept intact (see :attr:`meds_uri`)."""
        return self._uri(self.scores, "scores")

    @property
    def meds_paths(self) -> MedsPaths:
        """The MEDS dataset (local paths)."""
        return MedsPaths(self._dir(self.meds, "meds"))

    @property
    def labels_dir(self) -> Path:
        """Folder of label tables."""
        return self._dir(self.labels, "labels")

    def label_table(self, task: str) -> Path:
        """``<labels>/<task>.parquet``: the MEDS label file of a task."""
        return self.labels_dir / f"{task}{LABEL_SUFFIX}"

    def label_extras(self, task: str) -> Path:
        """``<labels>/<task>.extra.parquet``: the sidecar of a time-to-event or forecast task's label file."""
        return self.labels_dir / f"{task}{LABEL_EXTRAS_SUFFIX}"

    def label_tasks(self) -> list[str]:
        """Tasks that have a label table in the labels folder, sorted (none when the folder is absent);
        sidecars and hidden files (staging folders) are not tasks."""
        return sorted(p.name[: -len(LABEL_SUFFIX)] for p in self.labels_dir.glob(f"*{LABEL_SUFFIX}")
                      if not p.name.endswith(LABEL_EXTRAS_SUFFIX) and not p.name.startswith((".", "_")))

    @property
    def label_summary(self) -> Path:
        """``<labels>/summary.json``: rows, subjects, positives and prevalence per task and split."""
        return self.labels_dir / LABEL_SUMMARY_JSON

    @property
    def label_kinds(self) -> Path:
        """``<labels>/tasks.json``: task -> kind (binary, time_to_event, forecast) of the tables written."""
        return self.labels_dir / LABEL_KINDS_JSON

    @property
    def token_paths(self) -> TokenPaths:
        """The tokens folder."""
        return TokenPaths(self._dir(self.tokens, "tokens"))

    @property
    def runs_dir(self) -> Path:
        """Folder of training runs."""
        return self._dir(self.runs, "runs")

    @property
    def pretrain_run(self) -> RunPaths:
        """The pretraining run."""
        return RunPaths(self.runs_dir / "pretrain")

    @property
    def finetune_run(self) -> RunPaths:
        """The finetuning run."""
        return RunPaths(self.runs_dir / "finetune")

    def simulate_run(self, name: str) -> RunPaths:
        """A zero-shot simulation run of ``ehrfm simulate``: ``<runs>/simulate/<name>/`` (``name``: its model
        name, e.g. ``zero_shot_m32``)."""
        return RunPaths(self.runs_dir / "simulate" / name)

    def simulate_predictions(self) -> list[Path]:
        """``predictions.parquet`` of every finished simulation run (its ``summary.json`` is written last),
        sorted by run name: what ``ehrfm evaluate`` adds to the finetuned predictions."""
        runs = sorted((self.runs_dir / "simulate").glob("*/"))
        return [RunPaths(r).predictions for r in runs
                if RunPaths(r).summary.exists() and RunPaths(r).predictions.exists()]

    @property
    def evaluation_dir(self) -> Path:
        """Folder of the evaluation report."""
        return self._dir(self.evaluation, "evaluation")

    @property
    def explanations_dir(self) -> Path:
        """``<evaluation>/explanations/``: ``ehrfm explain`` (attributions.json, attributions.md,
        event_attributions.parquet)."""
        return self.evaluation_dir / "explanations"

    @property
    def explain_json(self) -> Path:
        """``attributions.json``: top codes per task with CIs, completeness checks (the completion marker)."""
        return self.explanations_dir / EXPLAIN_JSON

    @property
    def explain_md(self) -> Path:
        """``attributions.md``: the same as tables."""
        return self.explanations_dir / "attributions.md"

    @property
    def explain_events(self) -> Path:
        """``event_attributions.parquet``: one row per (task row, event) with its attribution."""
        return self.explanations_dir / "event_attributions.parquet"

    @property
    def scores_dir(self) -> Path:
        """Folder of batch scores."""
        return self._dir(self.scores, "scores")

    @property
    def mlflow_db(self) -> Path:
        """The embedded MLflow sqlite store."""
        return self.root_dir / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        """Artifact folder of the embedded MLflow store (never ./mlruns of the current directory)."""
        return self.root_dir / "mlartifacts"

    def tracking_uri(self) -> str:
        """The embedded store's URI (``sqlite:///<root>/mlflow.db``, absolute)."""
        return f"sqlite:///{self.mlflow_db.resolve()}"

    @property
    def logs_dir(self) -> Path:
        """``logs/``: per-step logs and configs of a pipeline run by the notebooks."""
        return self.root_dir / "logs"

    @property
    def demo_summary(self) -> Path:
        """``demo_summary.json`` written by ``ehrfm demo``."""
        return self.root_dir / "demo_summary.json"
