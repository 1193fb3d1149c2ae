"""Serving input and output: request rows -> one patient's MEDS events; predictions -> FHIR R4 RiskAssessment.

Input: a DataFrame (or records) with, per row, ``bundle`` (a FHIR R4 Bundle as JSON text, one patient) or
``events`` (a JSON list of MEDS events ``{subject_id, time, code, numeric_value?, encounter_id?}``), and
optionally ``prediction_time`` (ISO 8601; default the last event time), ``tasks`` (comma-separated) and
``explain`` (true/false: attach attributions; default the served model's ``explain`` setting).

Partial records: by default a resource the ingest rejects (FHIR validation, an impossible time, a bad
value, a subject other than the Bundle's Patient) is left out and the patient is scored on the rest; the
rejects are kept as :class:`Issue` rows (``PatientInput.issues``) and answered as a FHIR OperationOutcome
(:func:`operation_outcome`). ``strict=True`` refuses the patient instead. The Patient itself missing or
rejected always refuses the row.

Bad input raises :class:`InputError` with an HTTP-like ``status`` (400 malformed, 413 over a limit, 422
well-formed but unscorable) and a message naming the row, the field and the limit. Messages never hold a
value from the payload (a patient's data must not reach logs through an error message): reasons coming
from the mapper are scrubbed of the offending resource's values (:func:`scrub`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ehrfm.explain.fhir import basis_and_extensions
from ehrfm.ingest.fhir import jsonio, textbounds
from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.ingest.fhir.ids import subject_id_for
from ehrfm.ingest.fhir.validate import is_known_type
from ehrfm.schema import CODE, ENCOUNTER_ID, EVENT_COLUMNS, NUMERIC_VALUE, SUBJECT_ID, TIME
from ehrfm.serve.core import Limits
from ehrfm.serve.outcome import error_outcome as error_outcome  # re-exported: one definition

INPUT_COLUMNS = ("bundle", "events", "prediction_time", "tasks", "explain")
UCUM = "http://unitsofmeasure.org"
BAD_REQUEST, TOO_LARGE, UNPROCESSABLE = 400, 413, 422
MAX_TASKS_CHARS = 4_096
"""A ``tasks`` value longer than this is refused before it is split (a task list is a few names)."""
MAX_LISTED_ISSUES = 1_000
"""Issues listed one by one in an OperationOutcome; the rest are counted in one more issue."""
_SHOWN_IN_ERRORS = 3  # rejects quoted in a strict-mode error message


class InputError(ValueError):
    """A request the model cannot score; the message names the row, the field and the problem.

    ``status``: 400 malformed JSON or a field of the wrong shape, 413 over a size or count limit, 422
    well-formed but unscorable (the default).
    """

    def __init__(self, message: str, status: int = UNPROCESSABLE) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Issue:
    """One resource left out of a patient's record: where it was (request ``row``, Bundle ``entry``,
    its type and id), the ``field`` to blame (dotted path, ``|`` between alternatives) and why (scrubbed of
    payload values). ``resource_type`` is None unless it is a FHIR type: a misspelt type is payload text."""

    row: int
    entry: int | None
    resource_type: str | None
    resource_id: str | None
    field: str | None
    reason: str


@dataclass
class PatientInput:
    """One request row, parsed: ``events`` in EVENTS_SCHEMA columns, ``patient_ref`` the FHIR Patient id
    (None for MEDS input), ``prediction_time`` (None = last event), ``tasks`` (None = every task),
    ``issues`` the resources left out of a partial record, ``explain`` the row's explanation switch (None =
    the served default) and ``entries`` the Bundle's entries (where explained events find their resource)."""

    row: int
    events: pd.DataFrame
    patient_ref: str | None
    prediction_time: pd.Timestamp | None
    tasks: list[str] | None
    issues: list[Issue] = field(default_factory=list)
    explain: bool | None = None
    entries: list[Any] | None = field(default=None, repr=False)

    @property
    def partial(self) -> bool:
        """True when some resource was left out."""
        return bool(self.issues)


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and v != v) or (isinstance(v, str) and not v.strip())


def _text(row: int, name: str, value: Any, limits: Limits) -> tuple[str | bytes | dict[str, Any] | list[Any],
                                                                       int]:
    """``(value, bytes)`` of a row's JSON field, refused over ``max_request_bytes`` before any parsing.

    Already-parsed JSON (a Python caller) is measured as text.
    """
    if isinstance(value, (dict, list)):
        try:
            size = len(jsonio.dumps(value))
        except (TypeError, ValueError) as e:  # the serialiser stops at its own nesting limit
            if "recursion" in str(e).lower():
                raise InputError(f"row {row}: field {name!r}: JSON nested deeper than "
                                 f"max_json_depth={limits.max_json_depth}", TOO_LARGE) from None
            raise InputError(f"row {row}: field {name!r} holds a value that is not JSON",
                             BAD_REQUEST) from None
    elif isinstance(value, (str, bytes)):
        value = str(value) if isinstance(value, str) else value  # numpy.str_ (MLflow "inputs") -> str
        # a character is at least one UTF-8 byte: a long string is refused before it is encoded
        size = len(value) if isinstance(value, bytes) or len(value) > limits.max_request_bytes else len(
            value.encode("utf-8", "surrogatepass"))
    else:
        raise InputError(f"row {row}: field {name!r} must be JSON text, got {type(value).__name__}",
                         BAD_REQUEST)
    if size > limits.max_request_bytes:  # (a string refused by its length holds at least that many bytes)
        raise InputError(f"row {row}: field {name!r} is {size:,} bytes or more, over the limit "
                         f"max_request_bytes={limits.max_request_bytes:,}", TOO_LARGE)
    return value, size


def _json(row: int, name: str, value: str | bytes | dict[str, Any] | list[Any], limits: Limits) -> Any:
    """Parse; 400 for malformed JSON, 413 past the parser's own nesting stop. The depth and element
    limits are checked by :func:`_bound` once the O(1) counts (resources, events) have passed: walking
    every value of a 30 MB document costs seconds, counting its entries nothing."""
    if isinstance(value, (dict, list)):
        return value
    try:
        return jsonio.loads(value)
    except RecursionError:  # the standard-library parser (orjson stops at 1,024 levels by itself)
        raise InputError(f"row {row}: field {name!r}: JSON nested deeper than "
                         f"max_json_depth={limits.max_json_depth}", TOO_LARGE) from None
    except ValueError as e:
        if "depth limit" in str(e) or "recursion" in str(e).lower():  # the parser's own nesting stop
            raise InputError(f"row {row}: field {name!r}: JSON nested deeper than "
                             f"max_json_depth={limits.max_json_depth}", TOO_LARGE) from None
        # decode errors carry a fixed description and a position; the message is scrubbed all the same
        where = (f" ({scrub(e.msg)} at line {e.lineno}, column {e.colno})"
                 if isinstance(e, json.JSONDecodeError) else "")
        raise InputError(f"row {row}: field {name!r} is not valid JSON{where}", BAD_REQUEST) from None


def _bound(row: int, name: str, obj: Any, limits: Limits, text: Any = None) -> None:
    """The JSON depth and element-count limits (413), before anything walks the document recursively.

    ``text``: the JSON text ``obj`` was parsed from; when its bounds prove the limits hold
    (:mod:`ehrfm.ingest.fhir.textbounds`, a C/NumPy scan) the Python walk over every value is skipped,
    else the walk decides and words the error. A scalar has no depth or values to count."""
    if not isinstance(obj, (dict, list)):
        return
    if isinstance(text, (str, bytes)) and textbounds.within(text, limits.max_json_depth,
                                                             limits.max_json_elements):
        return
    try:
        jsonio.check_bounds(obj, limits.max_json_depth, limits.max_json_elements)
    except jsonio.JsonLimitError as e:
        raise InputError(f"row {row}: field {name!r}: {e}", TOO_LARGE) from None


_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"")
_MIN_SCRUBBED = 3  # shorter strings (units, flags) would blank out ordinary words of a reason


def _strings(resource: Any) -> Iterator[str]:
    """Every string value in a resource (not keys, not ``resourceType``), without recursion."""
    stack = [resource]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(v for k, v in node.items() if k != "resourceType")
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and len(node) >= _MIN_SCRUBBED:
            yield node


def scrub(reason: str, resource: Any = None) -> str:
    """``reason`` without payload values: quoted text and any string value of ``resource`` (codes, ids,
    values a mapper or validator message may quote) become ``<value>``."""
    for value in sorted(set(_strings(resource)), key=len, reverse=True):
        if value in reason:
            reason = reason.replace(value, "<value>")
    return _QUOTED.sub("<value>", reason)


def _count(row: int, name: str, items: Any, limit: int, what: str) -> None:
    """413 when a list holds more than ``limit`` items: O(1), so it comes before anything walks them."""
    if isinstance(items, list) and len(items) > limit:
        raise InputError(f"row {row}: field {name!r} holds {len(items):,} {what}, over the limit "
                         f"max_{what}={limit:,}", TOO_LARGE)


def _entries(row: int, bundle: Any) -> list[Any]:
    """The Bundle's entries after the shape checks (400)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InputError(f"row {row}: field 'bundle.resourceType' must be 'Bundle'", BAD_REQUEST)
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries:
        raise InputError(f"row {row}: field 'bundle.entry' must be a non-empty list of resources",
                         BAD_REQUEST)
    return entries


def _patient(row: int, entries: list[Any]) -> tuple[int, str]:
    """``(entry index, logical id)`` of the one Patient (422 when there is not exactly one with an id)."""
    found = [i for i, e in enumerate(entries) if isinstance(e, dict) and isinstance(e.get("resource"), dict)
             and e["resource"].get("resourceType") == "Patient"]
    if len(found) != 1:
        raise InputError(f"row {row}: field 'bundle.entry': expected exactly one Patient resource, found "
                         f"{len(found)}")
    pid = entries[found[0]]["resource"].get("id")
    if not isinstance(pid, str) or not pid:
        raise InputError(f"row {row}: field 'Patient.id' (entry[{found[0]}]) is missing: the Patient needs "
                         "a logical id")
    return found[0], pid


def _describe(issue: Issue, with_id: bool) -> str:
    """``entry[3] Observation[/id] field valueQuantity.value: reason`` (ids only where payload may go)."""
    what = issue.resource_type or "resource"
    if with_id and issue.resource_id:
        what += f"/{issue.resource_id}"
    where = f"entry[{issue.entry}] " if issue.entry is not None else ""
    return f"{where}{what} field {issue.field or '?'}: {issue.reason}"


def parse_bundle(row: int, value: Any, limits: Limits, validate: str = "full",
                 strict: bool = False) -> PatientInput:
    """A Bundle (JSON text) -> a :class:`PatientInput` (no time, no tasks: see :func:`parse_request`).

    Exactly one Patient with an id is required and it must map (422). Any other rejected resource (FHIR
    validation, impossible time, bad value, a subject other than the Patient) is left out and listed in
    ``issues``; with ``strict`` it refuses the row instead (422, the first rejects named by entry, type,
    field and reason)."""
    text, _ = _text(row, "bundle", value, limits)
    bundle = _json(row, "bundle", text, limits)
    # limits first (count, then depth and values), shape second: an oversized document is a 413 whatever
    # its shape, and a 170k-entry Bundle is refused without walking its values
    _count(row, "bundle.entry", bundle.get("entry") if isinstance(bundle, dict) else None,
           limits.max_resources, "resources")
    _bound(row, "bundle", bundle, limits, text)
    entries = _entries(row, bundle)
    p_entry, pid = _patient(row, entries)
    sid = subject_id_for(pid)
    try:
        result = bundle_to_events({"resourceType": "Bundle", "entry": entries}, validate=validate,
                                  source_file=f"<row {row}>")
    except ValueError as e:  # our own messages (bad validate, a non-object resource): scrubbed regardless
        raise InputError(f"row {row}: field 'bundle': {scrub(str(e))}", BAD_REQUEST) from None
    issues = []
    for r in result.rejects.to_pylist():
        i = r["record_index"]
        resource = entries[i].get("resource") if i is not None and isinstance(entries[i], dict) else None
        rtype = r["resource_type"] if r["resource_type"] and is_known_type(r["resource_type"]) else None
        issues.append(Issue(row, i, rtype, r["resource_id"], r["field"], scrub(r["reason"], resource)))
    issues.sort(key=lambda i: -1 if i.entry is None else i.entry)
    for issue in issues:
        if issue.entry == p_entry:
            raise InputError(f"row {row}: the Patient was rejected: {_describe(issue, with_id=False)}")
    if strict and issues:
        shown = "; ".join(_describe(i, with_id=False) for i in issues[:_SHOWN_IN_ERRORS])
        raise InputError(f"row {row}: {len(issues)} resource(s) in field 'bundle' rejected (strict): {shown}")
    events = result.events_df()
    # the ingest rejects records whose subject is not a Patient of the Bundle; this keeps a second
    # timeline out of the scorer should one slip through all the same
    events = events[events[SUBJECT_ID] == sid].reset_index(drop=True)
    _check_events(row, events, limits)
    return PatientInput(row, events, pid, None, None, issues, entries=entries)


def parse_events(row: int, value: Any, limits: Limits) -> pd.DataFrame:
    """MEDS events (JSON list of objects, one subject) -> an EVENTS_SCHEMA-column DataFrame."""
    text, _ = _text(row, "events", value, limits)
    data = _json(row, "events", text, limits)
    _count(row, "events", data, limits.max_events, "events")  # before building a frame of them
    _bound(row, "events", data, limits, text)
    if not isinstance(data, list) or not data:
        raise InputError(f"row {row}: field 'events' must be a non-empty JSON list of event objects",
                         BAD_REQUEST)
    for i, ev in enumerate(data):
        if not isinstance(ev, dict):
            raise InputError(f"row {row}: field 'events[{i}]' must be an object", BAD_REQUEST)
        if not isinstance(ev.get(CODE), str) or not ev[CODE]:
            raise InputError(f"row {row}: field 'events[{i}].code' must be a non-empty string", BAD_REQUEST)
        if not isinstance(ev.get(SUBJECT_ID), int) or isinstance(ev.get(SUBJECT_ID), bool):
            raise InputError(f"row {row}: field 'events[{i}].subject_id' must be an integer", BAD_REQUEST)
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
    except (ValueError, TypeError, OverflowError) as e:
        raise InputError(f"row {row}: field 'events[].time' must be ISO 8601 or null ({type(e).__name__})",
                         BAD_REQUEST) from None
    try:
        frame[NUMERIC_VALUE] = pd.to_numeric(frame[NUMERIC_VALUE], errors="raise").astype("float32")
    except (ValueError, TypeError):
        raise InputError(f"row {row}: field 'events[].numeric_value' must be a number or null",
                         BAD_REQUEST) from None
    frame[ENCOUNTER_ID] = frame[ENCOUNTER_ID].astype("string")
    frame = frame[EVENT_COLUMNS].sort_values(TIME, na_position="first", kind="stable").reset_index(drop=True)
    _check_events(row, frame, limits)
    return frame


def _check_events(row: int, events: pd.DataFrame, limits: Limits) -> None:
    if len(events) > limits.max_events:
        raise InputError(f"row {row}: {len(events):,} events, over the limit "
                         f"max_events={limits.max_events:,}", TOO_LARGE)
    if events[TIME].isna().all():
        raise InputError(f"row {row}: no event has a time (nothing to predict from)")


def parse_time(row: int, value: Any, max_clock_skew_s: int | None = None,
               now: pd.Timestamp | None = None) -> pd.Timestamp | None:
    """``prediction_time`` (ISO 8601; an offset is converted to UTC, none means UTC) or None when blank.

    With ``max_clock_skew_s``, a time later than ``now`` (default: the clock) + that many seconds is
    refused (422): a prediction cannot be made from the future.
    """
    if _blank(value):
        return None
    if not isinstance(value, (str, pd.Timestamp)) and not hasattr(value, "isoformat"):
        raise InputError(f"row {row}: field 'prediction_time' must be an ISO 8601 date-time string, got "
                         f"{type(value).__name__}", BAD_REQUEST)
    try:
        ts = pd.Timestamp(str(value) if isinstance(value, str) else value)  # numpy.str_ -> str
    except (ValueError, TypeError, OverflowError):
        raise InputError(f"row {row}: field 'prediction_time' is not an ISO 8601 date-time",
                         BAD_REQUEST) from None
    if pd.isna(ts):
        return None
    ts = ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts
    if max_clock_skew_s is not None:
        clock = (now if now is not None else pd.Timestamp.now(tz="UTC"))
        clock = clock.tz_convert("UTC").tz_localize(None) if clock.tzinfo is not None else clock
        if ts > clock + pd.Timedelta(seconds=max_clock_skew_s):
            raise InputError(f"row {row}: field 'prediction_time' is in the future (more than "
                             f"max_clock_skew_s={max_clock_skew_s} s after the server's clock)")
    return ts


def parse_tasks(row: int, value: Any) -> list[str] | None:
    """``tasks`` (comma-separated names) -> a list, None when blank; over :data:`MAX_TASKS_CHARS`
    characters it is refused without being split (413)."""
    if _blank(value):
        return None
    if not isinstance(value, str):
        raise InputError(f"row {row}: field 'tasks' must be a comma-separated string, got "
                         f"{type(value).__name__}", BAD_REQUEST)
    if len(value) > MAX_TASKS_CHARS:
        raise InputError(f"row {row}: field 'tasks' is {len(value):,} characters, over the limit of "
                         f"{MAX_TASKS_CHARS:,}", TOO_LARGE)
    return [t.strip() for t in str(value).split(",") if t.strip()] or None


def parse_flag(row: int, name: str, value: Any) -> bool | None:
    """A true/false field (JSON boolean, or the text true/false/1/0/yes/no): None when blank (400 else)."""
    if _blank(value):
        return None
    if isinstance(value, bool):
        return value
    if hasattr(value, "item") and isinstance(value.item(), bool):  # numpy.bool_ from a DataFrame column
        return bool(value.item())
    text = str(value).strip().lower() if isinstance(value, str) else None
    if text not in ("true", "false", "1", "0", "yes", "no"):
        raise InputError(f"row {row}: field {name!r} must be true or false", BAD_REQUEST)
    return text in ("true", "1", "yes")


def parse_request(frame: pd.DataFrame, limits: Limits, validate: str = "full",
                  strict: bool = False) -> list[PatientInput]:
    """Every row of a request DataFrame (columns in :data:`INPUT_COLUMNS`) -> :class:`PatientInput`.

    Cheap checks of the whole request come first (row count, columns, every row's size and their sum
    against ``max_body_bytes``), so an oversized request is refused before any row is parsed.
    """
    if len(frame) == 0:
        raise InputError("the request has no rows", BAD_REQUEST)
    if len(frame) > limits.max_patients:
        raise InputError(f"the request has {len(frame):,} rows, over the limit "
                         f"max_patients={limits.max_patients:,}", TOO_LARGE)
    unknown = set(map(str, frame.columns)) - set(INPUT_COLUMNS)
    if unknown:  # names not echoed: a misparsed body (CSV of a record) puts patient data in the header
        raise InputError(f"the request has {len(unknown)} unknown input column(s); expected only "
                         f"{list(INPUT_COLUMNS)}", BAD_REQUEST)
    records = frame.to_dict("records")
    fields, total = [], 0
    for i, rec in enumerate(records):
        has_b, has_e = not _blank(rec.get("bundle")), not _blank(rec.get("events"))
        if has_b == has_e:
            raise InputError(f"row {i}: give exactly one of the fields 'bundle' (FHIR R4 Bundle JSON) or "
                             "'events' (MEDS events JSON)", BAD_REQUEST)
        name = "bundle" if has_b else "events"
        text, size = _text(i, name, rec[name], limits)
        total += size
        if total > limits.max_body_bytes:
            raise InputError(f"the request's bundle/events fields hold over {total:,} bytes (rows 0-{i}), "
                             f"over the limit max_body_bytes={limits.max_body_bytes:,}", TOO_LARGE)
        fields.append((name, text))
    out = []
    for i, (rec, (name, text)) in enumerate(zip(records, fields, strict=True)):
        tasks = parse_tasks(i, rec.get("tasks"))  # cheap checks of the row before its record is mapped
        when = parse_time(i, rec.get("prediction_time"), limits.max_clock_skew_s)
        explain = parse_flag(i, "explain", rec.get("explain"))
        if name == "bundle":
            p = parse_bundle(i, text, limits, validate, strict)
        else:
            p = PatientInput(i, parse_events(i, text, limits), None, None, None)
        p.prediction_time, p.tasks, p.explain = when, tasks, explain
        out.append(p)
    return out


def _fhirpath(resource_type: str | None, field_name: str) -> str:
    """``component.0.code`` of an Observation -> ``Observation.component[0].code``."""
    path = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", field_name)
    return f"{resource_type or 'Resource'}.{path}"


def operation_outcome(issues: Sequence[Issue]) -> dict[str, Any]:
    """A FHIR R4 OperationOutcome (dict) listing rejected resources as warnings: ``expression`` the
    FHIRPath of the field, ``diagnostics`` the reason with the entry index, type and id. Without issues:
    one informational issue (an OperationOutcome needs at least one)."""
    if not issues:
        return {"resourceType": "OperationOutcome", "issue": [
            {"severity": "information", "code": "informational", "diagnostics": "no resource was rejected"}]}
    listed: list[dict[str, Any]] = []
    for issue in issues[:MAX_LISTED_ISSUES]:
        item: dict[str, Any] = {"severity": "warning", "code": "invalid",
                                "diagnostics": f"left out: {_describe(issue, with_id=True)}"}
        if issue.field:
            item["expression"] = [_fhirpath(issue.resource_type, f) for f in issue.field.split("|")]
        listed.append(item)
    if len(issues) > MAX_LISTED_ISSUES:
        listed.append({"severity": "warning", "code": "invalid",
                       "diagnostics": f"{len(issues) - MAX_LISTED_ISSUES:,} more resource(s) left out"})
    return {"resourceType": "OperationOutcome", "issue": listed}


def _days(v: float) -> dict[str, Any]:
    return {"value": float(v), "unit": "days", "system": UCUM, "code": "d"}


def risk_assessment(result: dict[str, Any], patient_ref: str | None, method: str, description: str = "",
                    topk_shown: int = 5, explanation: dict[str, Any] | None = None) -> dict[str, Any]:
    """A FHIR R4 RiskAssessment (dict) for one (patient, task) result of :meth:`Scorer.score_events`.

    binary: one prediction with ``probabilityDecimal`` = prob; tte: one per horizon ``t`` of the grid with
    P(event by t) = 1 - S(t) and ``whenRange`` [0, t] days; forecast: the top codes with their scores.
    ``explanation`` (:func:`ehrfm.serve.pyfunc.explanation_summary`): the contributing events as ``basis``
    references and extensions (:func:`ehrfm.explain.fhir.basis_and_extensions`).
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
    out = {"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": subject},
           "occurrenceDateTime": when, "method": {"text": method}, "code": {"text": task},
           "prediction": preds}
    if explanation is not None:
        basis, extensions = basis_and_extensions(explanation)
        out["extension"] = extensions
        if basis:
            out["basis"] = basis
    return out


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
