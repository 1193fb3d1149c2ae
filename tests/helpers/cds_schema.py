"""CDS Hooks 2.0 JSON Schemas (``tests/serve/schemas``) and a validator for the serving tests.

The schemas were written for ehrfm from the CDS Hooks 2.0 specification text
(https://cds-hooks.hl7.org/2.0/): the discovery response, a hook request (generic, with the
``patient-view`` context checked when that is the hook) and the service response (cards, system actions).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Literal

from jsonschema import Draft202012Validator

Kind = Literal["discovery", "request", "response"]
SCHEMAS = Path(__file__).resolve().parents[1] / "serve" / "schemas"


@cache
def validator(kind: Kind) -> Draft202012Validator:
    """The Draft 2020-12 validator of schema ``kind``, with format checks on (``uuid``)."""
    schema = json.loads((SCHEMAS / f"{kind}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


def errors(kind: Kind, obj: Any) -> list[str]:
    """Every violation of schema ``kind`` by ``obj``, as ``<json path>: <schema keyword>`` (sorted).

    Only the location and the failed keyword are given, never the offending value, so a failing test
    does not print payload content.
    """
    return sorted(f"{e.json_path}: {e.validator}" for e in validator(kind).iter_errors(obj))


def validate(kind: Kind, obj: Any) -> None:
    """Raise ``AssertionError`` listing every violation (path and keyword) when ``obj`` breaks ``kind``."""
    found = errors(kind, obj)
    if found:
        raise AssertionError(f"CDS Hooks {kind} schema: " + "; ".join(found))
