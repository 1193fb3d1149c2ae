"""The MLflow pyfunc model: FHIR R4 Bundles (or MEDS events) in, risks, survival curves, forecast codes
and FHIR RiskAssessment resources out.

Request (a DataFrame; over HTTP ``{"dataframe_records": [...]}`` or ``{"inputs": [...]}``): per row one
of ``bundle`` / ``events`` (JSON text), optional ``prediction_time``, ``tasks`` and ``explain`` (see
:mod:`ehrfm.serve.fhir_io`). Response: one row per (patient, task) with the columns of
:data:`OUTPUT_COLUMNS` (``partial``: resources were left out of the record, listed in ``issues`` as a FHIR
OperationOutcome; ``explanation``: with explanations on, the top contributing events as JSON, also in the
RiskAssessment as ``basis`` references or extensions, see :mod:`ehrfm.explain.fhir`). Bad input raises
``MlflowException(INVALID_PARAMETER_VALUE)``, which the MLflow scoring server answers with HTTP 400 and
the message; nothing from the payload is in the message. (``ehrfm serve`` answers the same
:class:`InputError` with its own status: 400, 413 or 422.)

Limits come from ``serve.json`` and can be overridden per deployment with the environment variables of
:data:`LIMIT_ENV` (``EHRFM_SERVE_<LIMIT>``, e.g. ``EHRFM_SERVE_MAX_REQUEST_BYTES``); ``EHRFM_SERVE_STRICT``
(true/false) overrides ``strict``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.models.model import MLMODEL_FILE_NAME
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types.schema import Array, ColSpec, Schema

from ehrfm.explain.fhir import ResourceFinder
from ehrfm.schema import PREDICTION_TIME, SUBJECT_ID
from ehrfm.serve.core import Limits, Scorer, gc_paused
from ehrfm.serve.fhir_io import (
    INPUT_COLUMNS,
    InputError,
    PatientInput,
    operation_outcome,
    parse_request,
    risk_assessment,
    to_records,
    validate_risk_assessment,
)
from ehrfm.serve.model_env import ehrfm_wheel, model_requirements

if TYPE_CHECKING:
    from ehrfm.explain.explainer import RowExplanation

ARTIFACT = "serving"
OUTPUT_COLUMNS = ("row", "patient_id", SUBJECT_ID, PREDICTION_TIME, "task", "kind", "model", "prob", "risk",
                  "survival", "times_days", "topk_codes", "topk_probs", "risk_assessment", "partial",
                  "issues", "explanation")
LIMIT_ENV = {f.name: f"EHRFM_SERVE_{f.name.upper()}" for f in dataclasses.fields(Limits)}
STRICT_ENV = "EHRFM_SERVE_STRICT"


def env_limits(base: Limits) -> Limits:
    """``base`` with any ``EHRFM_SERVE_MAX_*`` environment overrides applied."""
    values = {}
    for key, var in LIMIT_ENV.items():
        raw = os.environ.get(var)
        if raw is not None:
            try:
                values[key] = int(raw)
            except ValueError:
                raise ValueError(f"${var}: expected an integer") from None
    return Limits(**{**base.__dict__, **values})


def env_strict(base: bool) -> bool:
    """``base`` unless ``$EHRFM_SERVE_STRICT`` says true/false (1/0, yes/no)."""
    raw = os.environ.get(STRICT_ENV)
    if raw is None:
        return base
    if raw.strip().lower() not in ("1", "0", "true", "false", "yes", "no"):
        raise ValueError(f"${STRICT_ENV}: expected true or false")
    return raw.strip().lower() in ("1", "true", "yes")


def _check_tasks(scorer: Scorer, patients: list[PatientInput]) -> None:
    """Every requested task is served (422 naming the item by position, never by its text)."""
    for p in patients:
        for i, t in enumerate(p.tasks or []):
            if t not in scorer.tasks:
                raise InputError(f"row {p.row}: field 'tasks': item {i} is not a served task "
                                 f"(served: {scorer.tasks})")


def predict_frame(scorer: Scorer, request: Any, limits: Limits | None = None,
                  strict: bool | None = None) -> pd.DataFrame:
    """Score a request (DataFrame or records) with a loaded :class:`Scorer`; raises :class:`InputError`.

    The one prediction function behind the pyfunc, ``ehrfm serve`` and Spark FHIR scoring. ``strict``
    (default ``scorer.config.strict``): refuse a patient with any rejected resource instead of scoring
    the rest. Output: :data:`OUTPUT_COLUMNS`, one row per (request row, task); ``prediction_time`` as ISO
    8601 with its UTC offset; ``issues`` the row's OperationOutcome JSON (None when nothing was left out).
    """
    with gc_paused():  # see gc_paused: the collector would rescan a large Bundle's objects many times
        return _predict_frame(scorer, request, limits or scorer.config.limits,
                              scorer.config.strict if strict is None else strict)


def _predict_frame(scorer: Scorer, request: Any, limits: Limits, strict: bool) -> pd.DataFrame:
    patients = parse_request(to_records(request), limits, scorer.config.validate, strict)
    _check_tasks(scorer, patients)
    method = f"{scorer.fm.model_name} ({scorer.fm.model.config.backbone})" + (
        f" {scorer.config.model_version}" if scorer.config.model_version else "")
    rows: list[dict[str, Any]] = []
    for p in patients:
        issues = json.dumps(operation_outcome(p.issues)) if p.issues else None
        explain = scorer.config.explain if p.explain is None else p.explain
        finder = ResourceFinder(p.entries) if explain and p.entries else None
        for r in scorer.score_events(p.events, p.prediction_time, p.tasks, explain=explain):
            ex = explanation_summary(r.pop("explanation", None), p.events, finder,
                                     scorer.config.explain_top_k)
            ra = validate_risk_assessment(risk_assessment(r, p.patient_ref, method,
                                                          scorer.descriptions.get(r["task"], ""),
                                                          explanation=ex))
            rows.append({"row": p.row, "patient_id": p.patient_ref, **r, "model": scorer.fm.model_name,
                         PREDICTION_TIME: utc_iso(r[PREDICTION_TIME]), "risk_assessment": json.dumps(ra),
                         "partial": p.partial, "issues": issues,
                         "explanation": json.dumps(ex) if ex is not None else None})
    out = pd.DataFrame(rows)
    for c in OUTPUT_COLUMNS:
        if c not in out:
            out[c] = None
    return out[list(OUTPUT_COLUMNS)].astype(object).where(out[list(OUTPUT_COLUMNS)].notna(), None)


def explanation_summary(ex: RowExplanation | None, events: pd.DataFrame, finder: ResourceFinder | None,
                        top_k: int) -> dict[str, Any] | None:
    """The JSON of one explanation: what was attributed, the completeness check and the ``top_k`` events,
    each with its description (``text``) and, when it came from a Bundle resource, ``resource``
    (``Type/id``)."""
    if ex is None:
        return None
    summary = ex.summary(top_k)
    for ev, item in zip(ex.top(top_k), summary["events"], strict=True):
        item["text"] = ev.describe()
        found = finder.find(events.iloc[ev.source]) if finder is not None and ev.source is not None else None
        item["resource"] = found
    return summary


def utc_iso(t: Any) -> str:
    """A naive-UTC (or zoned) time as ISO 8601 with an explicit offset: ``2020-01-05T12:00:00+00:00``."""
    ts = pd.Timestamp(t)
    return (ts.tz_convert("UTC") if ts.tzinfo is not None else ts.tz_localize("UTC")).isoformat()


class ServingInputError(MlflowException):
    """Bad input (INVALID_PARAMETER_VALUE -> HTTP 400). The scoring server rewrites ``message`` to
    ``"Failed to predict data '<the whole request>'. Error: <message>"``; this class keeps only the part
    after ``Error:`` so a patient's record is not echoed into responses (and the logs of whatever
    gateway sits in front of the server)."""

    _SEP = "\nError: "

    @property
    def message(self) -> str:
        """The error message, without any echoed request data."""
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        self._message = value.rsplit(self._SEP, 1)[-1] if self._SEP in value else value


class EhrfmPyfunc(mlflow.pyfunc.PythonModel):  # type: ignore[misc,name-defined]
    """``mlflow.pyfunc`` wrapper around :class:`Scorer` (artifact ``serving`` = a serving folder)."""

    # MLflow wraps a subclass's predict for validation by its type hints and, finding none, warns at class
    # creation (under its own warning filter); the model is logged with an explicit signature instead. This
    # MLflow attribute (as its ChatModel uses it) skips both; were it ever dropped, the warning comes back.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        """Load the serving folder once per process."""
        self.scorer = Scorer(context.artifacts[ARTIFACT])
        self.limits = env_limits(self.scorer.config.limits)
        self.strict = env_strict(self.scorer.config.strict)

    # no type hints here on purpose: MLflow derives (and then enforces) a signature from predict's hints
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Score the request; bad input -> ``MlflowException`` with INVALID_PARAMETER_VALUE (HTTP 400)."""
        try:
            return predict_frame(self.scorer, model_input, self.limits, self.strict)
        except InputError as e:
            raise ServingInputError(str(e), error_code=INVALID_PARAMETER_VALUE) from None


def signature() -> ModelSignature:
    """Input: the optional string columns of :data:`INPUT_COLUMNS`; output: the response columns."""
    inputs = Schema([ColSpec("string", c, required=False) for c in INPUT_COLUMNS])
    outputs = Schema([ColSpec("long", "row"), ColSpec("string", "patient_id", required=False),
                      ColSpec("long", SUBJECT_ID), ColSpec("string", PREDICTION_TIME),
                      ColSpec("string", "task"),
                      ColSpec("string", "kind"), ColSpec("string", "model"),
                      ColSpec("double", "prob", required=False), ColSpec("double", "risk", required=False),
                      ColSpec(Array("double"), "survival", required=False),
                      ColSpec(Array("double"), "times_days", required=False),
                      ColSpec(Array("string"), "topk_codes", required=False),
                      ColSpec(Array("double"), "topk_probs", required=False),
                      ColSpec("string", "risk_assessment"), ColSpec("boolean", "partial"),
                      ColSpec("string", "issues", required=False),
                      ColSpec("string", "explanation", required=False)])
    return ModelSignature(inputs=inputs, outputs=outputs)


def example_bundle() -> dict[str, Any]:
    """A tiny synthetic one-patient R4 Bundle (no real data): the logged input example."""
    pid = "example-patient"
    return {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": f"urn:uuid:{pid}", "resource": {"resourceType": "Patient", "id": pid, "gender": "female",
                                                      "birthDate": "1960-04-02"}},
        {"fullUrl": "urn:uuid:example-enc", "resource": {
            "resourceType": "Encounter", "id": "example-enc", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": f"urn:uuid:{pid}"},
            "period": {"start": "2020-01-01T08:00:00Z", "end": "2020-01-05T12:00:00Z"}}},
        {"fullUrl": "urn:uuid:example-obs", "resource": {
            "resourceType": "Observation", "id": "example-obs", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2160-0"}]},
            "subject": {"reference": f"urn:uuid:{pid}"}, "encounter": {"reference": "urn:uuid:example-enc"},
            "effectiveDateTime": "2020-01-02T09:00:00Z",
            "valueQuantity": {"value": 1.1, "unit": "mg/dL", "system": "http://unitsofmeasure.org",
                              "code": "mg/dL"}}},
    ]}


def input_example() -> pd.DataFrame:
    """One row: the example bundle, scored at its discharge time."""
    return pd.DataFrame([{"bundle": json.dumps(example_bundle()), "prediction_time": "2020-01-05T12:00:00Z"}])


MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
"""The model-from-code file logged as the pyfunc's ``python_model``: it builds :class:`EhrfmPyfunc` when
MLflow loads the model (no pickled object in the model)."""


class _PortablePyfunc:
    """``mlflow.pyfunc`` as a flavor for ``Model.log``, minus the machine-specific things it writes:
    ``MLmodel`` records each pyfunc artifact's source ``uri`` (here a temporary serving folder) beside its
    ``path`` inside the model, and the source path of the model's code file (copied into the model);
    loading reads only ``path`` and the code file's name: the ``uri`` is dropped, the code path is a name."""

    @staticmethod
    def save_model(path: str, mlflow_model: Model, **kwargs: Any) -> None:
        """``mlflow.pyfunc.save_model`` into ``path``, then rewrite ``MLmodel`` without local paths."""
        mlflow.pyfunc.save_model(path=path, mlflow_model=mlflow_model, **kwargs)
        conf = mlflow_model.flavors[mlflow.pyfunc.FLAVOR_NAME]
        for info in conf.get("artifacts", {}).values():
            info.pop("uri", None)
        if conf.get("model_code_path"):  # the loader joins the model folder and this name
            conf["model_code_path"] = os.path.basename(conf["model_code_path"])
        mlflow_model.save(os.path.join(path, MLMODEL_FILE_NAME))


def log_pyfunc(serving_dir: str | Path, name: str = "ehrfm_pyfunc", *,
               wheel: str | Path | None = None) -> Any:
    """Log the pyfunc model (serving folder as artifact, signature, input example) into the active run,
    with the ehrfm wheel and pinned requirements (:mod:`ehrfm.serve.model_env`), so it loads in an
    environment built from ``requirements.txt`` alone.

    ``wheel``: an ehrfm wheel to ship (default: ``$EHRFM_WHEEL``, else built from the running ehrfm).
    Returns MLflow's ``ModelInfo`` (``.model_uri``).
    """
    with tempfile.TemporaryDirectory(prefix="ehrfm-wheel-") as tmp:
        whl = ehrfm_wheel(tmp, wheel)
        return Model.log(artifact_path=None, name=name, flavor=_PortablePyfunc,
                         flavor_name="pyfunc.CustomPythonModel", python_model=str(MODEL_CODE),
                         artifacts={ARTIFACT: str(serving_dir)},
                         code_paths=[str(whl)], signature=signature(), input_example=input_example(),
                         pip_requirements=model_requirements(whl))
