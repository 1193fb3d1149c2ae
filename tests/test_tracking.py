"""Tracker on a tmp sqlite store: params (flattened), metrics, artifacts, tags, nested runs; NullTracker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ehrfm.tracking import NullTracker, Tracker, default_tracking_uri, flatten, make_tracker


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_tracker_records_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in ./mlruns
    out = tmp_path / "out"
    t = Tracker(out, experiment="exp")
    assert t.tracking_uri == f"sqlite:///{out.resolve() / 'mlflow.db'}"
    parent = t.start_run("parent")
    t.log_params({"optim": {"lr": 0.1}, "model": {"backbone": "mamba"}})
    t.log_metrics({"loss": 2.0}, step=1)
    t.log_metrics({"loss": 1.5}, step=2)
    (tmp_path / "cfg.yaml").write_text("a: 1\n")
    t.log_artifact(tmp_path / "cfg.yaml")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "w.txt").write_text("w")
    t.log_artifacts(tmp_path / "model", "model")
    t.set_tags({"backbone": "mamba", "skipped": None})
    child = t.start_run("child", nested=True)
    t.end()

    client = MlflowClient(t.tracking_uri)
    run = client.get_run(parent)
    assert run.data.params == {"optim.lr": "0.1", "model.backbone": "mamba"}
    assert [m.value for m in client.get_metric_history(parent, "loss")] == [2.0, 1.5]
    assert run.data.tags["backbone"] == "mamba" and "skipped" not in run.data.tags
    assert sorted(a.path for a in client.list_artifacts(parent)) == ["cfg.yaml", "model"]
    assert run.info.artifact_uri.startswith((out / "mlartifacts").resolve().as_uri())
    assert client.get_run(child).data.tags["mlflow.parentRunId"] == parent
    assert client.get_run(child).info.status == "FINISHED"
    assert not (tmp_path / "mlruns").exists()
    # a second tracker on the same store reuses the experiment, and refuses to log outside a run
    again = Tracker(out, experiment="exp")
    assert again.experiment_id == t.experiment_id
    with pytest.raises(RuntimeError, match="start_run"):
        again.log_metrics({"a": 1.0})


def test_env_uri_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert default_tracking_uri(tmp_path / "out") == uri
    assert os.environ["MLFLOW_TRACKING_URI"] == uri


def test_null_tracker_is_a_no_op(tmp_path: Path) -> None:
    t = make_tracker(False, tmp_path)
    assert isinstance(t, NullTracker) and not isinstance(t, Tracker)
    assert t.start_run("x") is None
    t.log_params({"a": 1})
    t.log_metrics({"m": 1.0}, step=3)
    t.set_tags({"a": "b"})
    t.end()
    assert list(tmp_path.iterdir()) == []



def test_metric_key_makes_names_mlflow_legal() -> None:
    from ehrfm.tracking import metric_key

    assert metric_key("tuning_recall@10/next_visit_codes") == "tuning_recall_at_10/next_visit_codes"
    assert metric_key("auroc (held_out)") == "auroc _held_out_"
    assert metric_key("val.loss-1:x") == "val.loss-1:x"
