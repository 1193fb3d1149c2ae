"""Run ``mlflow models serve`` for a registered model as a child process (tests and benchmarks only).

The server runs in its own process group (uvicorn forks workers), is waited for on ``/ping`` with a
deadline, and is stopped by signalling the whole group (SIGTERM, then SIGKILL) with bounded waits.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Server:
    """A running scoring server: base ``url``, process group id ``pgid``, ``log`` file."""

    url: str
    pgid: int
    log: Path

    @property
    def invocations(self) -> str:
        """The scoring endpoint."""
        return f"{self.url}/invocations"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def group_alive(pgid: int) -> bool:
    """Whether any process of group ``pgid`` is still running."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not group_alive(proc.pid):
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.time() + grace_s
        while time.time() < deadline and group_alive(proc.pid):
            proc.poll()  # reap the parent so its pid leaves the group
            time.sleep(0.1)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)


@contextmanager
def serve(model_uri: str, log: str | Path, *, tracking_uri: str | None = None, port: int | None = None,
          env: Mapping[str, str] | None = None, start_timeout_s: float = 90,
          grace_s: float = 10) -> Iterator[Server]:
    """Start ``mlflow models serve -m model_uri --env-manager local`` on 127.0.0.1, yield a :class:`Server`.

    The venv's ``bin/`` goes first on PATH (mlflow needs its ``uvicorn``); ``env`` adds variables (e.g.
    ``EHRFM_SERVE_MAX_REQUEST_BYTES``). Raises ``RuntimeError`` with the log tail when ``/ping`` does not
    answer within ``start_timeout_s``. The process group is gone when the context exits.
    """
    venv_bin = str(Path(sys.executable).parent)
    port = port or free_port()
    cmd = [f"{venv_bin}/mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    with _started(cmd, port, log, tracking_uri=tracking_uri, env=env, start_timeout_s=start_timeout_s,
                  grace_s=grace_s) as server:
        yield server


@contextmanager
def ehrfm_serve(model: str, log: str | Path, *, args: Sequence[str] = (), tracking_uri: str | None = None,
                port: int | None = None, env: Mapping[str, str] | None = None, start_timeout_s: float = 180,
                grace_s: float = 10) -> Iterator[Server]:
    """Start ``ehrfm serve --model model --port <free>`` (plus ``args``) on 127.0.0.1, like :func:`serve`;
    ``/ping`` answers once every worker has loaded the model."""
    venv_bin = str(Path(sys.executable).parent)
    port = port or free_port()
    cmd = [f"{venv_bin}/ehrfm", "serve", "--model", model, "--host", "127.0.0.1", "--port", str(port), *args]
    with _started(cmd, port, log, tracking_uri=tracking_uri, env=env, start_timeout_s=start_timeout_s,
                  grace_s=grace_s) as server:
        yield server


@contextmanager
def _started(cmd: Sequence[str], port: int, log: str | Path, *, tracking_uri: str | None,
             env: Mapping[str, str] | None, start_timeout_s: float, grace_s: float) -> Iterator[Server]:
    """Run ``cmd`` in its own process group until ``/ping`` answers; stop the group on exit."""
    venv_bin = str(Path(sys.executable).parent)
    full_env = {**os.environ, "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}", **(env or {})}
    if tracking_uri:
        full_env["MLFLOW_TRACKING_URI"] = tracking_uri
    log = Path(log)
    with open(log, "wb") as fh:
        proc = subprocess.Popen(list(cmd), env=full_env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", proc.pid, log)
    try:
        deadline = time.time() + start_timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"scoring server did not answer /ping (exit code {proc.poll()}):\n{tail}")
            time.sleep(0.5)
        yield server
    finally:
        _stop(proc, grace_s)
