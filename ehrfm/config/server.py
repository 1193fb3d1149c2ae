"""``ehrfm serve``: the hardened HTTP server (MLflow scoring protocol, FHIR ``$risk``, CDS Hooks)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ehrfm.config.base import ConfigBase, require


@dataclass
class CdsConfig(ConfigBase):
    """The CDS Hooks 2.0 ``patient-view`` service."""

    service_id: str = "ehrfm-risk"
    """Service id: discovery lists it, clients call ``POST /cds-services/<service_id>``."""
    tasks: list[str] = field(default_factory=list)
    """Tasks shown as cards (empty: every binary and time-to-event task of the model)."""
    allowed_fhir_servers: list[str] = field(default_factory=list)
    """URL prefixes of FHIR servers this service may query when a request's prefetch is incomplete. Empty:
    never fetch (answer 412), so a request cannot make the server call arbitrary URLs."""
    fetch_timeout_s: float = 10.0
    """Timeout of each FHIR server request."""
    warning_at: float = 0.2
    """Risk at or above which a card's indicator is ``warning``."""
    critical_at: float = 0.5
    """Risk at or above which a card's indicator is ``critical``."""

    def __post_init__(self) -> None:
        require(bool(self.service_id.strip()) and "/" not in self.service_id, "cds.service_id",
                self.service_id, "must be a non-empty path segment")
        require(0 < self.warning_at <= self.critical_at <= 1, "cds.warning_at", self.warning_at,
                "need 0 < warning_at <= critical_at <= 1")
        require(self.fetch_timeout_s > 0, "cds.fetch_timeout_s", self.fetch_timeout_s, "must be > 0")
        for url in self.allowed_fhir_servers:
            require(url.startswith(("http://", "https://")), "cds.allowed_fhir_servers", url,
                    "must be http(s) URL prefixes")


@dataclass
class ServerConfig(ConfigBase):
    """``ehrfm serve``: one front process (HTTP, limits, auth, logs, metrics) and ``workers`` scoring
    processes under its supervision (a killed or timed-out worker is replaced)."""

    model: str = "models:/ehrfm@champion"
    """Registered model URI (models:/name@alias, models:/name/version, runs:/...) or a local serving / run
    folder."""
    tracking_uri: str | None = None
    """MLflow store (default: $MLFLOW_TRACKING_URI, else the layout's <root>/mlflow.db when it exists)."""
    host: str = "127.0.0.1"
    """Interface to bind (0.0.0.0 exposes the server to the network: put TLS and auth in front)."""
    port: int = 5001
    """TCP port."""
    workers: int = 2
    """Scoring processes (each loads the model; requests beyond them wait in a bounded queue)."""
    timeout_s: float = 30.0
    """Per-request deadline, from the first byte read to the answer; past it the worker doing the work is
    killed and replaced and the client gets 504."""
    max_queue: int = 64
    """Requests admitted at once (in flight + waiting for a worker); beyond it: 503 at once."""
    strict: bool | None = None
    """All-or-nothing scoring of a patient when any resource is rejected (default: the model's serve.json,
    i.e. partial records)."""
    token_env: str = "EHRFM_SERVE_TOKEN"
    """Environment variable holding the bearer token; when set (or token_file is given) every endpoint but
    /ping needs ``Authorization: Bearer <token>``."""
    token_file: str | None = None
    """File holding the bearer token (first line)."""
    docs: bool = False
    """Serve /openapi.json and /docs (off by default: they describe the attack surface)."""
    max_body_bytes: int | None = None
    """Whole request limit, enforced while reading (default: the model's limits.max_body_bytes)."""
    log_file: str | None = None
    """Structured (JSON lines) request log; default standard error. Never holds request content."""
    startup_timeout_s: float = 300.0
    """How long a worker may take to load the model."""
    cds: CdsConfig = field(default_factory=CdsConfig)
    """CDS Hooks service."""

    def __post_init__(self) -> None:
        require(1 <= self.port <= 65535, "port", self.port, "must be a TCP port")
        require(1 <= self.workers <= 64, "workers", self.workers, "must be 1..64")
        require(self.timeout_s > 0, "timeout_s", self.timeout_s, "must be > 0")
        require(self.max_queue >= self.workers, "max_queue", self.max_queue, "must be >= workers")
        require(self.max_body_bytes is None or self.max_body_bytes >= 1024, "max_body_bytes",
                self.max_body_bytes, "must be >= 1024")
        require(self.startup_timeout_s > 0, "startup_timeout_s", self.startup_timeout_s, "must be > 0")
