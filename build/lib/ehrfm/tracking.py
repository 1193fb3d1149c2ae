"""Run tracking: the only module that imports MLflow for runs.

Default store: ``sqlite:///<dir>/mlflow.db`` with the experiment's ``artifact_location`` set explicitly to
``<dir>/mlartifacts`` (so nothing lands in ``./mlruns``); ``$MLFLOW_TRACKING_URI`` overrides the store.
:class:`NullTracker` has the same methods and does nothing (tracking disabled). :class:`TrackingCallback`
routes Lightning's logged metrics through a tracker.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl

# MLflow refuses param values longer than this
_MAX_PARAM_LEN = 6000


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists/tuples kept as their string form)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


_BAD_METRIC_CHARS = re.compile(r"[^A-Za-z0-9_\-. :/]")


def metric_key(name: str) -> str:
    """An MLflow-legal metric name: ``@`` becomes ``_at_`` (``recall@10`` -> ``recall_at_10``), and any other
    character outside MLflow's set (alphanumerics, ``_ - . space : /``) becomes ``_``."""
    return _BAD_METRIC_CHARS.sub("_", name.replace("@", "_at_"))


def default_tracking_uri(directory: str | Path) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<directory>/mlflow.db``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(directory).resolve() / 'mlflow.db'}"


def git_commit(path: str | Path = ".") -> str | None:
    """HEAD commit of the git repository containing ``path``, or None outside one."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(path).resolve(), capture_output=True,
                             text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class NullTracker:
    """Tracking disabled: every method is a no-op; ``run_id`` is None."""

    run_id: str | None = None

    def start_run(self, name: str, nested: bool = False, parent_run_id: str | None = None,
                  tags: Mapping[str, str] | None = None) -> str | None:
        """No-op."""
        return None

    def log_params(self, params: Mapping[str, Any]) -> None:
        """No-op."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """No-op."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """No-op."""

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        """No-op."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """No-op."""

    def end(self, status: str = "FINISHED") -> None:
        """No-op."""


class Tracker(NullTracker):
    """An MLflow run in ``experiment`` on ``tracking_uri`` (see module docstring for the defaults)."""

    def __init__(self, directory: str | Path, experiment: str = "ehrfm", tracking_uri: str | None = None,
                 artifacts: str | Path | None = None) -> None:
        """``artifacts``: artifact folder of a new experiment (default ``<directory>/mlartifacts``)."""
        from mlflow.tracking import MlflowClient

        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.tracking_uri = tracking_uri or default_tracking_uri(self.directory)
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = Path(artifacts).resolve() if artifacts is not None else self.directory / "mlartifacts"
            self.experiment_id = self.client.create_experiment(experiment,
                                                               artifact_location=location.as_uri())
        else:
            self.experiment_id = found.experiment_id
        self.run_id = None

    def _require_run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("Tracker: call start_run() first")
        return self.run_id

    def start_run(self, name: str, nested: bool = False, parent_run_id: str | None = None,
                  tags: Mapping[str, str] | None = None) -> str:
        """Create a run; ``nested`` (or ``parent_run_id``) makes it a child of that parent run."""
        all_tags = {"mlflow.runName": name, **(tags or {})}
        if parent_run_id is not None:
            all_tags["mlflow.parentRunId"] = parent_run_id
        elif nested and self.run_id is not None:
            all_tags["mlflow.parentRunId"] = self.run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        self.run_id = run.info.run_id
        return self.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log a (nested) config, flattened to dotted keys."""
        from mlflow.entities import Param

        items = [Param(k, str(v)[:_MAX_PARAM_LEN]) for k, v in flatten(params).items()]
        run_id = self._require_run()
        for i in range(0, len(items), 100):  # MLflow's per-call batch limit
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Log scalar metrics at ``step``."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(metric_key(k), float(v), now, step or 0) for k, v in metrics.items()]
        if items:
            self.client.log_batch(self._require_run(), metrics=items)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy one file into the run's artifacts."""
        self.client.log_artifact(self._require_run(), str(path), artifact_path)

    def log_artifacts(self, directory: str | Path, artifact_path: str | None = None) -> None:
        """Copy a folder into the run's artifacts."""
        self.client.log_artifacts(self._require_run(), str(directory), artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values stringified; None values skipped)."""
        run_id = self._require_run()
        for k, v in tags.items():
            if v is not None:
                self.client.set_tag(run_id, k, str(v))

    def end(self, status: str = "FINISHED") -> None:
        """Close the run (``FINISHED``, ``FAILED`` or ``KILLED``)."""
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)


def make_tracker(enabled: bool, directory: str | Path, experiment: str = "ehrfm",
                 tracking_uri: str | None = None, artifacts: str | Path | None = None) -> NullTracker:
    """A :class:`Tracker`, or a :class:`NullTracker` when ``enabled`` is false."""
    return Tracker(directory, experiment, tracking_uri, artifacts) if enabled else NullTracker()


class TrackingCallback(pl.Callback):
    """Sends Lightning's logged scalars to a tracker every ``every_n_steps`` optimizer steps and after
    each validation; sets the ``ops_path`` tag once the kernels have run. Rank zero only."""

    def __init__(self, tracker: NullTracker, every_n_steps: int = 10,
                 tags: Mapping[str, Any] | None = None) -> None:
        self.tracker, self.every = tracker, max(1, every_n_steps)
        self.tags = dict(tags or {})
        self._last_step = -1

    def _log(self, trainer: pl.Trainer, keys: Iterable[str] | None = None) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if keys is None or k in keys}
        self.tracker.log_metrics(metrics, step=trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Log training metrics on optimizer-step boundaries."""
        step = trainer.global_step
        if step != self._last_step and step % self.every == 0:
            self._last_step = step
            self._log(trainer, [k for k in trainer.callback_metrics if k.startswith("train")])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log validation metrics."""
        if not trainer.sanity_checking:
            self._log(trainer, [k for k in trainer.callback_metrics if k.startswith("val")])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Final metrics and the tags known only after the kernels ran."""
        self._log(trainer)
        if trainer.is_global_zero:
            from ehrfm.ops import current_ops_path

            self.tracker.set_tags({**self.tags, "ops_path": current_ops_path() or "none"})
