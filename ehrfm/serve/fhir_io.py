"""Serving input and output: request rows -> one patient's MEDS events; predictions -> FHIR R4 RiskAssessment.

Input: a DataFrame (or records) with, per row, ``bundle`` (a FHIR R4 Bundle as JSON text, one patient) or
``events`` (a JSON list of MEDS events ``{subject_id, time, code, numeric_value?, encounter_id?}``), and
optionally ``prediction_time`` (ISO 8601; default the last event time) and ``tasks`` (comma-separated).
Bad input raises :class:`InputError` with a message naming the row and the field, never echoing values
(a patient's data must not reach logs through an error message).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ehrfm.ingest.fhir import jsonio
from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.schema import CODE, ENCOUNTER_ID, EVENT_COLUMNS, NUMERIC_VALUE, SUBJECT_ID, TIME
from ehrfm.serve.core import Limits

INPUT_COLUMNS = ("bundle", "events", "prediction_time", "tasks")
UCUM = "http://unitsofmeasure.org"


class InputError(ValueError):
    """A request the model cannot score; the message names the row, the field and the problem."""


@dataclass
class PatientInput:
    """One request row, parsed: ``events`` in EVENTS_SCHEMA columns, ``patient_ref`` the FHIR Patient id
    (None for MEDS input), ``prediction_time`` (None = last event), ``tasks`` (None = every task)."""

    row: int
    events: pd.DataFrame
    patient_ref: str | None
    prediction_time: pd.Timestamp | None
    tasks: list[str] | None


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def _text(row: int, name: str, value: Any, limits: Limits) -> str | bytes:
    if isinstance(value, (dict, list)):  # already-parsed JSON (e.g. a Python caller): measure its text
        value = jsonio.dumps(value)
    if not isinstance(value, (str, bytes)):
        raise InputError(f"row {row}: field {name!r} must be JSON text, got {type(value).__name__}")
    if isinstance(value, str):
        value = str(value)  # numpy.str_ (MLflow's "inputs" parsing) is a str that orjson refuses
    text: str | bytes = value
    size = len(value.encode("utf-8") if isinstance(value, str) else value)
    if size > limits.max_request_bytes:
        raise InputError(f"row {row}: field {name!r} is {size:,} bytes, over the limit "
                         f"max_request_bytes={limits.max_request_bytes:,}")
    return text


def _json(row: int, name: str, text: str | bytes) -> Any:
    try:
        return jsonio.loads(text)
    except ValueError as e:  # orjson / json decode errors name the position, not the content
        raise InputError(f"row {row}: field {name!r} is not valid JSON ({e})") from None


def parse_bundle(row: int, value: Any, limits: Limits, validate: str = "full") -> tuple[pd.DataFrame, str]:
    """A Bundle (JSON text) -> (events, Patient logical id). Exactly one Patient is required; any
    resource the ingest rejects (FHIR validation, impossible times, ...) fails the request with its
    type, id, field and reason, so nothing is scored from a silently partial record."""
    bundle = _json(row, "bundle", _text(row, "bundle", value, limits))
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        got = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        raise InputError(f"row {row}: field 'bundle.resourceType' must be 'Bundle', got {got!r}")
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"row {row}: field 'bundle.entry' must be a non-empty list of resources")
    patients = [e["resource"].get("id") for e in entries
                if isinstance(e, dict) and isinstance(e.get("resource"), dict)
                and e["resource"].get("resourceType") == "Patient"]
    if len(patients) != 1:
        raise InputError(f"row {row}: field 'bundle.entry': expected exactly one Patient resource, found "
                         f"{len(patients)}")
    if not isinstance(patients[0], str) or not patients[0]:
        raise InputError(f"row {row}: field 'Patient.id' is missing: the Patient needs a logical id")
    try:
        result = bundle_to_events(bundle, validate=validate, source_file=f"<row {row}>")
    except ValueError as e:
        raise InputError(f"row {row}: field 'bundle': {e}") from None
    if result.rejects.num_rows:
        rej = result.rejects.to_pylist()
        shown = "; ".join(f"entry[{r['record_index']}] {r['resource_type']}/{r['resource_id']} field "
                          f"{r['field'] or '?'}: {r['reason']}" for r in rej[:3])
        raise InputError(f"row {row}: {len(rej)} resource(s) in field 'bundle' rejected: {shown}")
    events = result.events_df()
    _check_events(row, events, limits)
    return events, str(patients[0])


def parse_events(row: int, value: Any, limits: Limits) -> pd.DataFrame:
    """MEDS events (JSON list of objects, one subject) -> an EVENTS_SCHEMA-column DataFrame."""
    data = _json(row, "events", _text(row, "events", value, limits))
    if not isinstance(data, list) or not data:
        raise InputError(f"row {row}: field 'events' must be a non-empty JSON list of event objects")
    for i, ev in enumerate(data):
        if not isinstance(ev, dict):
            raise InputError(f"row {row}: field 'events[{i}]' must be an object")
        if not isinstance(ev.get(CODE), str) or not ev[CODE]:
            raise InputError(f"row {row}: field 'events[{i}].code' must be a non-empty string")
        if not isinstance(ev.get(SUBJECT_ID), int) or isinstance(ev.get(SUBJECT_ID), bool):
            raise InputError(f"row {row}: field 'events[{i}].subject_id' must be an integer")
    frame = pd.DataFrame(data)
    if frame[SUBJECT_ID].nunique() != 1:
        raise InputError(f"row {row}: field 'events[].subject_id' must hold one subject per row, "
                         f"found {frame[SUBJECT_ID].nunique()}")
    for c in EVENT_COLUMNS:
        if c not in frame:
            frame[c] = None
    try:
        frame[TIME] = pd.to_datetime(frame[TIME], utc=True,
                                     format="ISO8601").dt.tz_localize(None).astype("datetime64[us]")
    except (ValueError, TypeError) as e:
        raise InputError(
            f"row {row}: field 'events[].time' must be ISO 8601 or null ({type(e).__name__})") from None
    try:
        frame[NUMERIC_VALUE] = pd.to_numeric(frame[NUMERIC_VALUE], errors="raise").astype("float32")
    except (ValueError, TypeError):
        raise InputError(f"row {row}: field 'events[].numeric_value' must be a number or null") from None
    frame[ENCOUNTER_ID] = frame[ENCOUNTER_ID].astype("string")
    frame = frame[EVENT_COLUMNS].sort_values(TIME, na_position="first", kind="stable").reset_index(drop=True)
    _check_events(row, frame, limits)
    return frame


def _check_events(row: int, events: pd.DataFrame, limits: Limits) -> None:
    if len(events) > limits.max_events:
        raise InputError(
            f"row {row}: {len(events):,} events, over the limit max_events={limits.max_events:,}")
    if events[TIME].isna().all():
        raise InputError(f"row {row}: no event has a time (nothing to predict from)")


def parse_time(row: int, value: Any) -> pd.Timestamp | None:
    """``prediction_time`` (ISO 8601; an offset is converted to UTC) or None when blank."""
    if _blank(value):
        return None
    try:
        ts = pd.Timestamp(str(value) if isinstance(value, str) else value)  # numpy.str_ -> str
    except (ValueError, TypeError):
        raise InputError(f"row {row}: field 'prediction_time' is not an ISO 8601 date-time") from None
    if pd.isna(ts):
        return None
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def parse_request(frame: pd.DataFrame, limits: Limits, validate: str = "full") -> list[PatientInput]:
    """Every row of a request DataFrame (columns in :data:`INPUT_COLUMNS`) -> :class:`PatientInput`."""
    if len(frame) == 0:
        raise InputError("the request has no rows")
    if len(frame) > limits.max_patients:
        raise InputError(f"the request has {len(frame)} rows, over the limit "
                         f"max_patients={limits.max_patients}")
    unknown = sorted(set(frame.columns) - set(INPUT_COLUMNS))
    if unknown:
        raise InputError(f"unknown input column(s) {unknown}; expected {list(INPUT_COLUMNS)}")
    out = []
    for i, rec in enumerate(frame.to_dict("records")):
        has_b, has_e = not _blank(rec.get("bundle")), not _blank(rec.get("events"))
        if has_b == has_e:
            raise InputError(f"row {i}: give exactly one of the fields 'bundle' (FHIR R4 Bundle JSON) or "
                             "'events' (MEDS events JSON)")
        if has_b:
            events, ref = parse_bundle(i, rec["bundle"], limits, validate)
        else:
            events, ref = parse_events(i, rec["events"], limits), None
        tasks = (None if _blank(rec.get("tasks"))
                 else [t.strip() for t in str(rec["tasks"]).split(",") if t.strip()])
        out.append(PatientInput(i, events, ref, parse_time(i, rec.get("prediction_time")), tasks))
    return out


def _days(v: float) -> dict[str, Any]:
    return {"value": float(v), "unit": "days", "system": UCUM, "code": "d"}


def risk_assessment(result: dict[str, Any], patient_ref: str | None, method: str, description: str = "",
                    topk_shown: int = 5) -> dict[str, Any]:
    """A FHIR R4 RiskAssessment (dict) for one (patient, task) result of :meth:`Scorer.score_events`.

    binary: one prediction with ``probabilityDecimal`` = prob; tte: one per horizon ``t`` of the grid with
    P(event by t) = 1 - S(t) and ``whenRange`` [0, t] days; forecast: the top codes with their scores.
    """
    task, outcome = result["task"], description or result["task"]
    preds: list[dict[str, Any]] = []
    if result.get("prob") is not None:
        preds.append({"outcome": {"text": f"{task}: {outcome}"}, "probabilityDecimal": float(result["prob"])})
    elif result.get("survival") is not None:
        for t, s in zip(result["times_days"][1:], result["survival"][1:], strict=True):
            preds.append({"outcome": {"text": f"{task}: event within {t:g} days ({outcome})"},
                          "probabilityDecimal": min(max(1.0 - float(s), 0.0), 1.0),
                          "whenRange": {"low": _days(0.0), "high": _days(t)}})
    else:
        for code, p in list(zip(result["topk_codes"], result["topk_probs"], strict=True))[:topk_shown]:
            preds.append({"outcome": {"text": f"{task}: {code}"},
                          "probabilityDecimal": min(max(float(p), 0.0), 1.0)})
    subject = f"Patient/{patient_ref}" if patient_ref else f"Patient/{result['subject_id']}"
    when = pd.Timestamp(result["prediction_time"]).strftime("%Y-%m-%dT%H:%M:%S+00:00")
    return {"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": subject},
            "occurrenceDateTime": when, "method": {"text": method}, "code": {"text": task},
            "prediction": preds}


def validate_risk_assessment(resource: dict[str, Any]) -> dict[str, Any]:
    """Validate against the FHIR R4 (R4B models) RiskAssessment; returns the resource or raises ValueError."""
    from fhir.resources.R4B.riskassessment import RiskAssessment

    RiskAssessment.model_validate(resource)
    return resource


def to_records(frame: pd.DataFrame | dict[str, Any] | Sequence[dict[str, Any]]) -> pd.DataFrame:
    """Accept a DataFrame, one dict or a list of dicts (a Python caller's payload) as a request frame."""
    if isinstance(frame, pd.DataFrame):
        return frame
    if isinstance(frame, dict):
        return pd.DataFrame([frame])
    if isinstance(frame, (list, tuple)) and all(isinstance(r, dict) for r in frame):
        return pd.DataFrame(list(frame))
    raise InputError(f"input must be a DataFrame or records with columns {list(INPUT_COLUMNS)}, "
                     f"got {type(frame).__name__}")
