"""Where a served model's serving folder is: a local folder, or an MLflow model URI downloaded once (light:
standard library at import; MLflow only when a URI must be downloaded)."""

from __future__ import annotations

import tempfile
from pathlib import Path

SERVE_JSON = "serve.json"  # the marker file of a serving folder (ehrfm.serve.core.SERVE_JSON)


def local_serving_dir(model: str, dst: str | Path | None = None) -> Path:
    """The serving folder of ``model``: a local folder (serving or finetuned model folder) or any MLflow
    model URI (``models:/ehrfm@champion``, ``runs:/...``), downloaded to ``dst`` (default a temp folder)."""
    p = Path(model)
    if p.is_dir():
        found = sorted(p.rglob(SERVE_JSON))
        return found[0].parent if found else p
    import mlflow.artifacts

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(dst or tempfile.mkdtemp(
        prefix="ehrfm-score-"))))
    found = sorted(local.rglob(SERVE_JSON))
    if not found:
        raise FileNotFoundError(f"--model {model}: no {SERVE_JSON} in the model's artifacts (not an ehrfm "
                                "pyfunc)")
    return found[0].parent
