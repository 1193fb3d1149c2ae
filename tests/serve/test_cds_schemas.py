"""The CDS Hooks 2.0 schemas (tests/serve/schemas) accept the specification's own example payloads (retyped
here) and refuse broken ones, each for the reason planted."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from helpers.cds_schema import Kind, errors, validate

# --- the specification's examples (CDS Hooks 2.0), retyped ---------------------------------------------

DISCOVERY: dict[str, Any] = {"services": [
    {"hook": "patient-view", "title": "Static CDS Service Example",
     "description": "An example of a CDS Service that returns a static set of cards",
     "id": "static-patient-greeter",
     "prefetch": {"patientToGreet": "Patient/{{context.patientId}}"}},
    {"hook": "order-select", "title": "Order Echo CDS Service",
     "description": "An example of a CDS Service that simply echoes the order(s) being placed",
     "id": "order-echo",
     "prefetch": {"patient": "Patient/{{context.patientId}}",
                  "medications": "MedicationRequest?patient={{context.patientId}}"}},
    {"hook": "order-sign", "title": "Pharmacogenomics CDS Service",
     "description": "An example of a more advanced, precision medicine CDS Service",
     "id": "pgx-on-order-sign",
     "usageRequirements": "Note: functionality of this CDS Service is degraded without access to a FHIR "
                          "Restful API as part of CDS recommendation generation."},
]}

REQUEST: dict[str, Any] = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "http://hooks.smarthealthit.org:9080",
    "hook": "patient-view",
    "fhirAuthorization": {"access_token": "some-opaque-fhir-access-token", "token_type": "Bearer",
                          "expires_in": 300, "scope": "user/Patient.read user/Observation.read",
                          "subject": "cds-service4"},
    "context": {"userId": "Practitioner/example", "patientId": "1288992", "encounterId": "89284"},
    "prefetch": {"patientToGreet": {"resourceType": "Patient", "gender": "male", "birthDate": "1925-12-23",
                                    "id": "1288992", "active": True}},
}

OVERRIDE_REASONS = [
    {"code": "reason-code-provided-by-service",
     "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
     "display": "Patient refused"},
    {"code": "12354", "system": "http://example.org/cds-services/fhir/CodeSystem/override-reasons",
     "display": "Contraindicated"},
]

RESPONSE: dict[str, Any] = {"cards": [
    {"uuid": "4e0a3a1e-3283-4575-ab82-028d55fe2719", "summary": "Example Card", "indicator": "info",
     "detail": "This is an example card.",
     "source": {"label": "Static CDS Service Example", "url": "https://example.com",
                "icon": "https://example.com/img/icon-100px.png"},
     "links": [{"label": "Google", "url": "https://google.com", "type": "absolute"},
               {"label": "Github", "url": "https://github.com", "type": "absolute"},
               {"label": "SMART Example App", "url": "https://smart.example.com/launch", "type": "smart",
                "appContext": "{\"session\":3456356,\"settings\":{\"module\":4235}}"}]},
    {"summary": "Another card", "indicator": "warning", "source": {"label": "Static CDS Service Example"},
     "overrideReasons": OVERRIDE_REASONS},
]}

# the Source example, and the create / update / delete Action examples, placed in one card
SOURCE = {"label": "Zika Virus Management", "url": "https://example.com/cdc-zika-virus-mgmt",
          "icon": "https://example.com/cdc-zika-virus-mgmt/100.png",
          "topic": {"system": "http://example.org/cds-services/fhir/CodeSystem/topics", "code": "12345",
                    "display": "Mosquito born virus"}}
ACTIONS = [
    {"type": "create", "description": "Create a prescription for Acetaminophen 250 MG",
     "resource": {"resourceType": "MedicationRequest", "id": "medrx001", "...": "<snipped for brevity>"}},
    {"type": "update", "description": "Update the order to record the appropriateness score",
     "resource": {"resourceType": "ServiceRequest", "id": "procedure-request-1",
                  "...": "<snipped for brevity>"}},
    {"type": "delete", "description": "Remove the inappropriate order",
     "resourceId": "ServiceRequest/procedure-request-1"},
]
SUGGESTING: dict[str, Any] = {"cards": [
    {"summary": "Suggestions", "indicator": "critical", "source": SOURCE, "selectionBehavior": "at-most-one",
     "suggestions": [{"label": "Apply the changes", "uuid": "e56e1945-20b3-4393-8503-a1a20fd73152",
                      "isRecommended": True, "actions": ACTIONS}]}],
    # the spec's systemActions example leaves out `description`, which its Action table REQUIRES: given here
    "systemActions": [{"type": "update", "description": "Record the MRI appropriateness",
                       "resource": {"resourceType": "ServiceRequest", "id": "example-MRI-59879846"}}]}


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``obj`` with the dotted ``path`` (list indices as digits) set, or deleted when
    ``value`` is ``...``."""
    out = copy.deepcopy(obj)
    *head, last = path.split(".")
    node: Any = out
    for key in head:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


@pytest.mark.parametrize(("kind", "obj"), [
    ("discovery", DISCOVERY), ("discovery", {"services": []}),
    ("request", REQUEST),
    ("request", {"hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea", "hook": "patient-view",
                 "context": {"userId": "PractitionerRole/123", "patientId": "1288992"}}),
    ("request", _set(REQUEST, "prefetch.conditions", None)),  # no data for a template: null
    ("request", _set(REQUEST, "hook", "order-select")),  # another hook: context not checked here
    ("response", RESPONSE), ("response", SUGGESTING), ("response", {"cards": []}),
    ("response", _set(RESPONSE, "cards.0.summary", "x" * 139)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_spec_examples_validate(kind: Kind, obj: Any) -> None:
    """The specification's examples, and the edge cases it allows, pass."""
    validate(kind, obj)


@pytest.mark.parametrize(("kind", "obj", "expected"), [
    ("response", _set(RESPONSE, "cards.1.summary", ...), "$.cards[1]: required"),
    ("response", _set(RESPONSE, "cards.0.indicator", "urgent"), "$.cards[0].indicator: enum"),
    ("response", _set(RESPONSE, "cards.1.indicator", ...), "$.cards[1]: required"),
    ("response", _set(RESPONSE, "cards.0.summary", "x" * 141), "$.cards[0].summary: maxLength"),
    ("response", _set(RESPONSE, "cards.0.summary", "x" * 140), "$.cards[0].summary: maxLength"),
    ("response", _set(RESPONSE, "cards.0.summary", ""), "$.cards[0].summary: minLength"),
    ("response", _set(RESPONSE, "cards.0.source.label", ...), "$.cards[0].source: required"),
    ("response", _set(RESPONSE, "cards.0.uuid", "not-a-uuid"), "$.cards[0].uuid: format"),
    ("response", _set(RESPONSE, "cards.0.links.0.type", "relative"), "$.cards[0].links[0].type: enum"),
    ("response", _set(RESPONSE, "cards.0.links.0.appContext", "{}"), "$.cards[0].links[0]: not"),
    ("response", _set(RESPONSE, "cards.0.links", []), "$.cards[0].links: minItems"),
    ("response", _set(RESPONSE, "cards.1.overrideReasons.0.display", ...),
     "$.cards[1].overrideReasons[0]: required"),
    ("response", _set(RESPONSE, "cards.0.indicater", "info"), "$.cards[0]: additionalProperties"),
    ("response", _set(RESPONSE, "cards", ...), "$: required"),
    ("response", _set(SUGGESTING, "cards.0.selectionBehavior", ...), "$.cards[0]: dependentRequired"),
    ("response", _set(SUGGESTING, "cards.0.suggestions.0.actions.0.type", "upsert"),
     "$.cards[0].suggestions[0].actions[0].type: enum"),
    ("response", _set(SUGGESTING, "cards.0.suggestions.0.actions.0.resource", ...),
     "$.cards[0].suggestions[0].actions[0]: required"),
    ("response", _set(SUGGESTING, "cards.0.suggestions.0.actions.2.resourceId", ...),
     "$.cards[0].suggestions[0].actions[2]: anyOf"),
    ("response", _set(SUGGESTING, "systemActions.0.description", ...), "$.systemActions[0]: required"),
    ("request", _set(REQUEST, "hook", ...), "$: required"),
    ("request", _set(REQUEST, "hookInstance", ...), "$: required"),
    ("request", _set(REQUEST, "context", ...), "$: required"),
    ("request", _set(REQUEST, "fhirServer", ...), "$: dependentRequired"),
    ("request", _set(REQUEST, "fhirServer", "hooks.smarthealthit.org"), "$.fhirServer: pattern"),
    ("request", _set(REQUEST, "fhirAuthorization.token_type", "MAC"),
     "$.fhirAuthorization.token_type: const"),
    ("request", _set(REQUEST, "context.patientId", ...), "$.context: required"),
    ("request", _set(REQUEST, "context.userId", "Device/1"), "$.context.userId: pattern"),
    ("request", _set(REQUEST, "prefetch.patientToGreet", {"id": "1"}), "$.prefetch.patientToGreet: oneOf"),
    ("discovery", _set(DISCOVERY, "services.0.hook", ...), "$.services[0]: required"),
    ("discovery", _set(DISCOVERY, "services.1.description", ...), "$.services[1]: required"),
    ("discovery", _set(DISCOVERY, "services.0.id", "a/b"), "$.services[0].id: pattern"),
    ("discovery", _set(DISCOVERY, "services.0.prefetch", {}), "$.services[0].prefetch: minProperties"),
    ("discovery", {}, "$: required"),
], ids=lambda v: v if isinstance(v, str) and v.startswith("$") else "")
def test_broken_payloads_fail(kind: Kind, obj: Any, expected: str) -> None:
    """Each broken payload fails for exactly the planted reason (and ``validate`` raises)."""
    assert errors(kind, obj) == [expected]
    with pytest.raises(AssertionError, match="CDS Hooks"):
        validate(kind, obj)


def test_errors_never_echo_values() -> None:
    """A failure names the path and the keyword, not the value (which may be patient data)."""
    marker = "PLANTED-MARKER-" + "z" * 140
    with pytest.raises(AssertionError) as exc:
        validate("response", _set(RESPONSE, "cards.0.summary", marker))
    assert "PLANTED-MARKER" not in str(exc.value)
