"""Registry helpers: log the pyfunc for a finetuned model (a folder or an MLflow run), register a version,
set an alias (``models:/<name>@<alias>``).

Store conventions follow :mod:`ehrfm.tracking`: sqlite store, experiment ``artifact_location`` explicit
(``<dir>/mlartifacts``), ``$MLFLOW_TRACKING_URI`` wins over the default ``sqlite:///<dir>/mlflow.db``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from ehrfm.config.serve import RegisterSummary, ServeConfig
from ehrfm.serve.core import build_serving_dir
from ehrfm.serve.pyfunc import log_pyfunc
from ehrfm.tracking import Tracker

PYFUNC_TAG = "ehrfm.pyfunc_model_uri"
RUN_MODEL_ARTIFACT = "model"  # where `ehrfm finetune` logs the finetuned model folder in its run


def _log_into_run(client: MlflowClient, run_id: str, serving: Path, config: ServeConfig,
                  wheel: str | Path | None) -> str:
    config.model_version = f"run {run_id}"
    (serving / "serve.json").write_text(json.dumps(config.to_dict(), indent=2))
    with mlflow.start_run(run_id=run_id):
        info = log_pyfunc(serving, wheel=wheel)
    client.set_tag(run_id, PYFUNC_TAG, info.model_uri)
    return str(info.model_uri)


def register(source: str | Path, name: str = "ehrfm", alias: str | None = "champion", *,
             tracking_uri: str | None = None, store_dir: str | Path = ".", experiment: str = "ehrfm-register",
             tokens_dir: str | Path | None = None, bins: str | Path | None = None,
             config: ServeConfig | None = None, wheel: str | Path | None = None) -> RegisterSummary:
    """Register ``source`` as a new version of ``name`` and point ``alias`` at it.

    ``source``: a finetuned model folder (or `ehrfm finetune` output folder) -> a new run in ``experiment``
    holds the pyfunc; or an MLflow run id -> its ``model/`` artifact (as `ehrfm finetune` logs it) is
    packaged into the same run, unless that run already has a pyfunc (tag ``ehrfm.pyfunc_model_uri``).
    ``tokens_dir``/``bins`` locate ``bins.json`` (and ``tokenize.json``) when the model folder lacks it.
    The logged model carries the ehrfm wheel (``wheel``, else ``$EHRFM_WHEEL``, else built from the running
    ehrfm) and pinned requirements: see :mod:`ehrfm.serve.model_env`.
    """
    # creates the experiment with its artifact_location
    tracker = Tracker(store_dir, experiment, tracking_uri)
    uri = tracker.tracking_uri
    mlflow.set_tracking_uri(uri)
    client = tracker.client
    with tempfile.TemporaryDirectory(prefix="ehrfm-register-") as tmp:
        if Path(source).is_dir():
            serving = build_serving_dir(source, Path(tmp) / "serving", tokens_dir=tokens_dir, bins=bins,
                                        config=config)
            run_id = tracker.start_run(f"register-{name}",
                                       tags={"stage": "register", "source": str(Path(source).resolve())})
            tracker.end("FINISHED")
            model_uri = _log_into_run(client, run_id, serving, config or _read_config(serving), wheel)
        else:
            run_id = str(source)
            try:
                run = client.get_run(run_id)
            except Exception as e:  # MlflowException: RESOURCE_DOES_NOT_EXIST
                raise ValueError(f"--run {source!r}: neither a folder nor a run id in {uri} ({e})") from None
            model_uri = run.data.tags.get(PYFUNC_TAG, "")
            if not model_uri:
                local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=RUN_MODEL_ARTIFACT,
                                                            dst_path=tmp, tracking_uri=uri)
                serving = build_serving_dir(local, Path(tmp) / "serving", tokens_dir=tokens_dir, bins=bins,
                                            config=config)
                model_uri = _log_into_run(client, run_id, serving, config or _read_config(serving), wheel)
    version = mlflow.register_model(model_uri, name)
    if alias:
        client.set_registered_model_alias(name, alias, version.version)
    serve_uri = f"models:/{name}@{alias}" if alias else f"models:/{name}/{version.version}"
    return RegisterSummary(name=name, version=str(version.version), alias=alias, model_uri=model_uri,
                           run_id=run_id, tracking_uri=uri, serve_uri=serve_uri)


def _read_config(serving: Path) -> ServeConfig:
    return ServeConfig.from_dict(json.loads((serving / "serve.json").read_text()))
