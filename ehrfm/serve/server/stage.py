"""``ehrfm serve``: resolve the model, start the workers and the HTTP server, block until stopped."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ehrfm.config.base import ConfigBase, ConfigError
from ehrfm.config.server import ServerConfig
from ehrfm.layout import Layout

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


@dataclass
class ServeSummary(ConfigBase):
    """What ``ehrfm serve`` served (printed when it stops)."""

    model_uri: str
    """The model served."""
    model_version: str
    """Registry version (or the serving folder's recorded version)."""
    url: str
    """Where it listened."""


def token(cfg: ServerConfig) -> str | None:
    """The bearer token: ``token_file``'s first line, else ``$<token_env>``; None = no auth."""
    if cfg.token_file:
        p = Path(cfg.token_file)
        if not p.is_file():
            raise ConfigError(f"token_file={cfg.token_file!r}: no such file")
        value = p.read_text().strip().splitlines()[0].strip() if p.read_text().strip() else ""
        if len(value) < 16:
            raise ConfigError(f"token_file={cfg.token_file!r}: the token must have at least 16 characters")
        return value
    value = os.environ.get(cfg.token_env, "").strip()
    if value and len(value) < 16:
        raise ConfigError(f"${cfg.token_env}: the token must have at least 16 characters")
    return value or None


def resolve_model(cfg: ServerConfig, layout: Layout) -> tuple[Path, str]:
    """(local serving folder, model version) for ``cfg.model``; registry URIs are downloaded once."""
    from ehrfm.serve.locate import local_serving_dir

    if Path(cfg.model).is_dir():
        return local_serving_dir(cfg.model), ""
    if not cfg.model.startswith(("models:/", "runs:/")) and "://" not in cfg.model:
        raise FileNotFoundError(f"--model {cfg.model}: no such folder, and not a models:/ or runs:/ URI")
    import mlflow

    uri = cfg.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri and layout.mlflow_db.exists():
        uri = layout.tracking_uri()
    if uri:
        mlflow.set_tracking_uri(uri)
    version = ""
    m = _ALIAS.match(cfg.model)
    if m and m["alias"]:
        version = str(mlflow.MlflowClient().get_model_version_by_alias(m["name"], m["alias"]).version)
    elif m:
        version = str(m["version"])
    folder = local_serving_dir(cfg.model, tempfile.mkdtemp(prefix="ehrfm-serve-"))
    return folder, version


def run(cfg: ServerConfig, layout: Layout) -> ServeSummary:
    """Serve until SIGINT/SIGTERM."""
    import uvicorn

    from ehrfm.serve.server import logs
    from ehrfm.serve.server.app import ServerState, build_app
    from ehrfm.serve.server.pool import WorkerPool

    logs.setup(cfg.log_file)
    secret = token(cfg)
    folder, version = resolve_model(cfg, layout)
    pool = WorkerPool(str(folder), cfg.workers, strict=cfg.strict, cds=cfg.cds.to_dict(),
                      startup_timeout_s=cfg.startup_timeout_s)
    state = ServerState(cfg, pool, secret, cfg.max_body_bytes, cfg.model, version)
    url = f"http://{cfg.host}:{cfg.port}"
    print(f"ehrfm serve: {cfg.model} (version {version or '-'}) on {url} with {cfg.workers} worker(s); "
          f"auth {'on' if secret else 'off'}", flush=True)
    uvicorn.run(build_app(state), host=cfg.host, port=cfg.port, log_config=None, access_log=False,
                server_header=False, timeout_keep_alive=5, lifespan="on")
    return ServeSummary(cfg.model, version, url)
