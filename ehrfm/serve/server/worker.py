"""A scoring worker process: loads the model once, then answers :class:`~ehrfm.serve.server.protocol.Job` s
from its pipe until the pipe closes.

All request parsing happens here, not in the front, so the front's deadline covers it and a worker stuck on
a hostile input is simply killed. After start-up the worker's standard output and error go to /dev/null and
warnings and library logging are off: nothing a library might print about an input can reach a log.
Scoring is :func:`ehrfm.serve.pyfunc.predict_frame`, the function behind the MLflow pyfunc and Spark
scoring.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import traceback
import uuid
import warnings
from multiprocessing.connection import Connection
from typing import Any

import orjson
import pandas as pd

from ehrfm.config.server import CdsConfig
from ehrfm.ingest.fhir.jsonio import JsonLimitError, loads_bounded
from ehrfm.serve.core import Limits, Scorer
from ehrfm.serve.fhir_io import InputError
from ehrfm.serve.server.errors import FHIR_JSON, JSON, dialect, error_reply
from ehrfm.serve.server.protocol import FAILED, READY, Job, Reply, WorkerInfo

FORMATS = ("dataframe_records", "dataframe_split", "inputs", "instances")
PATHS = {"invocations": "/invocations", "fhir_risk": "/fhir/$risk", "cds": "/cds-services/"}


def worker_main(conn: Connection, serving_dir: str, strict: bool | None, threads: int,
                cds: dict[str, Any]) -> None:
    """Process entry point: load the serving folder, report :data:`READY` (or :data:`FAILED` with the
    reason), then serve jobs until the pipe closes or a ``None`` job arrives."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the front stops us
    warnings.simplefilter("ignore")  # import chatter (e.g. MLflow's type-hint advice) stays out of logs
    try:
        import torch

        torch.set_num_threads(threads)
        handler = Handler(Scorer(serving_dir), strict, CdsConfig.from_dict(cds))
    except Exception as e:  # start-up only: no request exists yet, the reason is about the model folder
        conn.send((FAILED, f"{type(e).__name__}: {e}"))
        return
    _silence()
    conn.send((READY, handler.info()))
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):  # the front is gone: so are we
            return
        if job is None:
            return
        conn.send(handler.handle(job))


def _silence() -> None:
    """Standard output/error to /dev/null (fd level, so C extensions too); warnings and logging off."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    logging.disable(logging.CRITICAL)


def where(exc: BaseException) -> str:
    """``module:line`` of the innermost ehrfm frame of ``exc`` (for logs: no message, no content)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/ehrfm/" in f.filename] or frames
    if not ours:
        return "?"
    f = ours[-1]
    return f"{f.filename.rsplit('/ehrfm/', 1)[-1]}:{f.lineno}"


def _bool(name: str, value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise InputError(f"parameter {name!r} must be true or false", 400)


def mlflow_frame(obj: Any) -> tuple[pd.DataFrame, bool | None]:
    """The MLflow scoring protocol's request JSON -> (request frame, ``params.strict``).

    Accepts ``dataframe_records`` (list of objects), ``dataframe_split`` (columns + data), ``inputs`` /
    ``instances`` (list of objects, or an object of columns); ``params`` may hold ``strict``.
    """
    if not isinstance(obj, dict):
        raise InputError(f"the request must be a JSON object with one of {list(FORMATS)}", 400)
    keys = [k for k in FORMATS if k in obj]
    if len(keys) != 1 or set(obj) - set(FORMATS) - {"params"}:
        raise InputError(f"the request must hold exactly one of {list(FORMATS)} (and optionally 'params')",
                         400)
    key, data = keys[0], obj[keys[0]]
    params = obj.get("params") or {}
    if not isinstance(params, dict) or set(params) - {"strict"}:
        raise InputError("field 'params' may only hold 'strict'", 400)
    strict = _bool("params.strict", params.get("strict"))
    if key == "dataframe_split":
        if not isinstance(data, dict) or not isinstance(data.get("columns"), list) \
                or not isinstance(data.get("data"), list):
            raise InputError("field 'dataframe_split' must be an object with 'columns' and 'data' lists", 400)
        cols = data["columns"]
        if not all(isinstance(c, str) for c in cols):
            raise InputError("field 'dataframe_split.columns' must be a list of strings", 400)
        for i, row in enumerate(data["data"]):
            if not isinstance(row, list) or len(row) != len(cols):
                raise InputError(f"field 'dataframe_split.data[{i}]' must be a list of {len(cols)} values",
                                 400)
        return pd.DataFrame(data["data"], columns=cols), strict
    if isinstance(data, dict) and key != "dataframe_records":  # columnar: {column: [values] | value}
        lists = [v for v in data.values() if isinstance(v, list)]
        if lists and (len(lists) != len(data) or len({len(v) for v in lists}) != 1):
            raise InputError(f"field {key!r}: column lists must all have the same length", 400)
        return (pd.DataFrame(data) if lists else pd.DataFrame([data])), strict
    if not isinstance(data, list) or not all(isinstance(r, dict) for r in data):
        raise InputError(f"field {key!r} must be a list of objects (one per patient)", 400)
    return pd.DataFrame(data), strict


def _json_default(v: Any) -> Any:
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(type(v).__name__)


def dumps(obj: Any) -> bytes:
    """Response JSON (numpy arrays and scalars, timestamps)."""
    return orjson.dumps(obj, default=_json_default, option=orjson.OPT_SERIALIZE_NUMPY)


class Handler:
    """Turns jobs into replies for one loaded model."""

    def __init__(self, scorer: Scorer, strict: bool | None, cds: CdsConfig) -> None:
        """``strict`` None: the model's ``serve.json`` setting."""
        from ehrfm.serve.pyfunc import env_limits

        self.scorer, self.cds = scorer, cds
        self.limits: Limits = env_limits(scorer.config.limits)
        self.strict = bool(scorer.config.strict) if strict is None else strict
        fm = scorer.fm
        self.method = f"{fm.model_name} ({fm.model.config.backbone})" + (
            f" {scorer.config.model_version}" if scorer.config.model_version else "")

    def info(self) -> WorkerInfo:
        """What the front shows on /version and /health."""
        fm = self.scorer.fm
        return WorkerInfo(pid=os.getpid(), model_name=fm.model_name, backbone=str(fm.model.config.backbone),
                          tasks=list(self.scorer.tasks),
                          kinds={t: self.scorer.spec(t).kind for t in self.scorer.tasks},
                          max_len=self.scorer.tokenize_cfg.max_len,
                          model_version=self.scorer.config.model_version, strict=self.strict,
                          limits=self.limits.to_dict())

    def handle(self, job: Job) -> Reply:
        """Answer one job; never raises (errors become replies in the endpoint's dialect)."""
        t0 = time.perf_counter()
        kind = dialect(PATHS.get(job.endpoint, "/"))
        try:
            if job.endpoint == "invocations":
                reply = self.invocations(job)
            elif job.endpoint == "fhir_risk":
                reply = self.fhir_risk(job)
            elif job.endpoint == "cds":
                from ehrfm.serve.server.cds import answer

                reply = answer(self, job)
            else:
                reply = error_reply(kind, 404, "no such endpoint", job.request_id)
        except JsonLimitError as e:
            reply = error_reply(kind, 413, f"request body: {e}", job.request_id, outcome=e.limit)
        except InputError as e:
            reply = error_reply(kind, e.status, str(e), job.request_id)
        except ValueError as e:  # malformed JSON from the parsers: positions only, no content
            reply = error_reply(kind, 400, f"request body is not valid JSON ({type(e).__name__})",
                                job.request_id, outcome="bad_json")
            reply.meta["where"] = where(e)
        except Exception as e:  # a bug: our message, the type and our source line in the log only
            reply = error_reply(kind, 500, f"internal error while scoring (request id {job.request_id})",
                                job.request_id, outcome="internal_error")
            reply.meta.update(error=type(e).__name__, where=where(e))
        reply.meta["worker_ms"] = round(1000 * (time.perf_counter() - t0), 1)
        return reply

    def loads(self, body: bytes) -> Any:
        """The request body parsed within the depth and element limits."""
        return loads_bounded(body, self.limits.max_json_depth, self.limits.max_json_elements)

    def predict(self, frame: pd.DataFrame, strict: bool | None) -> pd.DataFrame:
        """:func:`ehrfm.serve.pyfunc.predict_frame` with this server's limits and strictness."""
        from ehrfm.serve.pyfunc import predict_frame

        return predict_frame(self.scorer, frame, self.limits, self.strict if strict is None else strict)

    def invocations(self, job: Job) -> Reply:
        """MLflow scoring protocol: ``{"predictions": [one record per (patient, task)]}``."""
        frame, strict = mlflow_frame(self.loads(job.body))
        out = self.predict(frame, strict)
        records = out.to_dict("records")
        meta = {"outcome": "ok", "rows": len(frame), "predictions": len(records),
                "partial_rows": int(out.drop_duplicates("row")["partial"].fillna(False).astype(bool).sum())
                if len(out) else 0}
        return Reply(200, JSON, dumps({"predictions": records}), meta)

    def fhir_risk(self, job: Job) -> Reply:
        """``POST /fhir/$risk``: a Bundle in; a ``collection`` Bundle of RiskAssessments (plus an
        OperationOutcome listing rejected resources, if any) out."""
        # ``explain`` is checked here (400 naming the query parameter) and passed as the row's field, the
        # one request-level override the scorer knows
        row = {"bundle": job.body, "prediction_time": job.params.get("prediction_time"),
               "tasks": job.params.get("tasks"), "explain": _bool("explain", job.params.get("explain"))}
        out = self.predict(pd.DataFrame([row]), _bool("strict", job.params.get("strict")))
        bundle, resources, partial = self.result_bundle(out)
        meta = {"outcome": "ok", "rows": 1, "predictions": len(out), "partial_rows": int(partial)}
        reply = Reply(200, FHIR_JSON, dumps(bundle), meta, resources)
        return reply

    def result_bundle(self, out: pd.DataFrame) -> tuple[dict[str, Any], dict[str, bytes], bool]:
        """(Bundle of RiskAssessments + OperationOutcome, RiskAssessments by id, partial?) for one row's
        predictions."""
        entries, resources = [], {}
        for rec in out.to_dict("records"):
            ra = orjson.loads(rec["risk_assessment"])
            ra["id"] = str(uuid.uuid4())
            resources[ra["id"]] = orjson.dumps(ra)
            entries.append({"fullUrl": f"urn:uuid:{ra['id']}", "resource": ra})
        partial = bool(len(out) and out["partial"].fillna(False).astype(bool).any())
        issues = next((i for i in out["issues"] if isinstance(i, str) and i), None) if len(out) else None
        if issues:
            oo = orjson.loads(issues)
            oo.setdefault("id", str(uuid.uuid4()))
            entries.append({"fullUrl": f"urn:uuid:{oo['id']}", "resource": oo})
        stamp = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%dT%H:%M:%S+00:00")
        return ({"resourceType": "Bundle", "type": "collection", "timestamp": stamp, "entry": entries},
                resources, partial)
