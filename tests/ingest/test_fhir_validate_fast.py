"""The fast FHIR validator against its reference twin (the full ``fhir.resources`` models).

The fast engine may only ever say "proved valid" or "ask the models"; so it matches the reference as long
as it never proves valid a resource the models reject. Checked on real Synthea resources of every type we
map (where it must also prove them valid, or it would be no faster) and on a corpus of invalid ones built
by mutating them: named mutations (wrong types, unknown fields, bad dates, nulls, bad codes and enums,
missing required elements, two values of one choice, bad contained resources, ...) and seeded random ones.
"""

from __future__ import annotations

import copy
import csv
import gzip
import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ehrfm.ingest.fhir import fastvalidate
from ehrfm.ingest.fhir.rules import Rules, load_rules
from ehrfm.ingest.fhir.validate import (
    _model,
    fhir_version,
    validate_resource,
    validate_resource_reference,
    validator_engine,
)

Resource = dict[str, Any]


def _bundles(folder: Path, n: int) -> list[Path]:
    """``n`` patient bundles spread over the size range (MANIFEST json_bytes)."""
    with open(folder.parent / "MANIFEST.csv", newline="") as fh:
        rows = sorted((r for r in csv.DictReader(fh) if r["patient_id"]), key=lambda r: int(r["json_bytes"]))
    step = max(len(rows) // n, 1)
    return [folder.parent / r["file"] for r in rows[::step][:n]]


@pytest.fixture(scope="module")
def rules() -> Rules:
    """The shipped mapping rules (which resource types are mapped, STU3 markers)."""
    return load_rules()


@pytest.fixture(scope="module")
def real(synthea_bundles: Path, rules: Rules) -> list[Resource]:
    """Every resource of a mapped type in 6 real bundles of different sizes."""
    out = []
    for path in _bundles(synthea_bundles, 6):
        with gzip.open(path) as fh:
            entries = json.loads(fh.read())["entry"]
        for entry in entries:
            if entry["resource"]["resourceType"] in rules.resources:
                out.append(entry["resource"])
    return out


def _fast_says_valid(resource: Resource, rules: Rules) -> bool:
    model = _model(fhir_version(resource, rules), str(resource.get("resourceType")))
    return fastvalidate.check(model, resource) is fastvalidate.VALID


def _agree(resource: Resource, rules: Rules) -> tuple[bool, Any]:
    """(whether the fast walk alone accepted it, the reference answer); fails when the engines differ."""
    reference = validate_resource_reference(resource, rules)
    with validator_engine("fast"):
        fast = validate_resource(resource, rules)
    assert fast == reference
    proved = _fast_says_valid(resource, rules)
    assert not (proved and reference is not None), f"fast walk accepted a rejected resource: {reference}"
    return proved, reference


def test_real_resources_are_proved_valid_by_the_fast_walk(real: list[Resource], rules: Rules) -> None:
    """Real data takes the fast path (else nothing is gained) and the answers equal the reference's."""
    types = {r["resourceType"] for r in real}
    assert len(real) > 500 and len(types) >= 8
    proved = [_agree(r, rules)[0] for r in real]
    assert all(proved), [r["resourceType"] for r, p in zip(real, proved, strict=True) if not p][:5]


def _first(resource: Resource, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in resource), None)


def _set(key: str, value: Any) -> Callable[[Resource], bool]:
    def mutate(r: Resource) -> bool:
        r[key] = value
        return True
    return mutate


def _set_existing(keys: tuple[str, ...], value: Any) -> Callable[[Resource], bool]:
    def mutate(r: Resource) -> bool:
        k = _first(r, keys)
        if k is None:
            return False
        r[k] = value
        return True
    return mutate


def _drop(keys: tuple[str, ...]) -> Callable[[Resource], bool]:
    def mutate(r: Resource) -> bool:
        k = _first(r, keys)
        if k is None:
            return False
        del r[k]
        return True
    return mutate


def _nested(edit: Callable[[Resource], None]) -> Callable[[Resource], bool]:
    """Apply ``edit`` to the first Coding found (code.coding[0], class, type[0].coding[0], ...)."""
    def mutate(r: Resource) -> bool:
        for node in _dicts(r):
            if "system" in node and "code" in node:
                edit(node)
                return True
        return False
    return mutate


def _dicts(node: Any) -> Iterator[Resource]:
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _dicts(v)
    elif isinstance(node, list):
        for v in node:
            yield from _dicts(v)


def _list_field(edit: Callable[[list[Any]], Any]) -> Callable[[Resource], bool]:
    """Apply ``edit`` to the first top-level list of objects (identifier, category, type, ...)."""
    def mutate(r: Resource) -> bool:
        for k, v in r.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                r[k] = edit(v)
                return True
        return False
    return mutate


def _add_choice(r: Resource) -> bool:
    """A second value of a choice element next to the one present."""
    choices: tuple[tuple[str, tuple[str, Any]], ...] = (
        ("value", ("valueString", "x")), ("effective", ("effectivePeriod", {})),
        ("onset", ("onsetString", "x")),
        ("medication", ("medicationReference", {"reference": "Medication/1"})))
    for prefix, extra in choices:
        if any(k.startswith(prefix) for k in r):
            other = extra if extra[0] not in r else (f"{prefix}Boolean", True)
            r[other[0]] = other[1]
            return True
    return False


def _quantity(value: Any) -> Callable[[Resource], bool]:
    """Set ``valueQuantity.value`` (Observations with a quantity)."""
    def mutate(r: Resource) -> bool:
        q = r.get("valueQuantity")
        if not isinstance(q, dict):
            return False
        q["value"] = value
        return True
    return mutate


TIMES = ("effectiveDateTime", "onsetDateTime", "authoredOn", "recordedDate", "performedDateTime",
         "occurrenceDateTime", "issued", "birthDate", "date", "created")
STATUS = ("status", "clinicalStatus", "intent")
MUTATIONS: dict[str, Callable[[Resource], bool]] = {
    "id is a number": _set("id", 123),
    "id empty": _set("id", ""),
    "id too long": _set("id", "a" * 65),
    "id with a space": _set("id", "a b"),
    "unknown field": _set("bogusField", "x"),
    "unknown field nested": _nested(lambda c: c.update(bogus=1)),
    "python name instead of alias": _set("status__ext", {"extension": [{"url": "http://x",
                                                                         "valueString": "y"}]}),
    "snake resource_type": _set("resource_type", "Observation"),
    "fhir_comments": _set("fhir_comments", "a comment"),
    "primitive extension, empty": _set("_status", {"extension": []}),
    "primitive extension": _set("_status", {"extension": [{"url": "http://x", "valueString": "y"}]}),
    "bad month": _set_existing(TIMES, "2020-13-45T00:00:00Z"),
    "30 February": _set_existing(TIMES, "2021-02-30"),
    "a word for a date": _set_existing(TIMES, "yesterday"),
    "leap second": _set_existing(TIMES, "2015-06-30T23:59:60Z"),
    "time without zone": _set_existing(TIMES, "2020-01-01T10:00:00"),
    "date as number": _set_existing(TIMES, 20200101),
    "null primitive": _set_existing(STATUS, None),
    "null required element": _set_existing(("code", "class", "subject"), None),
    "null in a list of elements": _list_field(lambda v: [*v, None]),
    "empty list": _list_field(lambda v: []),
    "object where a list belongs": _list_field(lambda v: v[0]),
    "list where one object belongs": _set_existing(("subject", "code", "encounter"), [{"reference": "x"}]),
    "reference as a string": _set_existing(("subject", "patient"), "Patient/1"),
    "empty object": _set_existing(("code", "subject", "class"), {}),
    "code with double space": _set_existing(STATUS, "fin  al"),
    "code with leading space": _set_existing(("status",), " final"),
    "code not in the value set": _set_existing(("status",), "bogus"),
    "code as a number": _set_existing(("status",), 1),
    "coding system a number": _nested(lambda c: c.update(system=5)),
    "coding code empty": _nested(lambda c: c.update(code="")),
    "coding display with a control character": _nested(lambda c: c.update(display="a\x01b")),
    "coding userSelected as text": _nested(lambda c: c.update(userSelected="true")),
    "coding version as a list": _nested(lambda c: c.update(version=["1"])),
    "missing status": _drop(("status",)),
    "missing code": _drop(("code",)),
    "missing class": _drop(("class",)),
    "missing subject/patient": _drop(("subject", "patient")),
    "two values of one choice": _add_choice,
    "decimal as text": _quantity("1.5"),
    "decimal not a number": _quantity("abc"),
    "boolean where a decimal belongs": _quantity(True),
    "integer decimal": _quantity(3),
    "contained of unknown type": _set("contained", [{"resourceType": "Nope", "id": "x"}]),
    "contained element, not a resource": _set("contained", [{"resourceType": "Coding", "code": "x"}]),
    "contained invalid resource": _set("contained", [{"resourceType": "Patient", "id": "x", "gender": 3}]),
    "contained valid resource": _set("contained", [{"resourceType": "Patient", "id": "x", "gender": "male"}]),
    "resourceType nested in an element": _nested(lambda c: c.update(resourceType="Coding")),
    "meta.lastUpdated a date only": _set("meta", {"lastUpdated": "2020-01-01"}),
    "STU3 clinicalStatus string": _set_existing(("clinicalStatus",), "active"),
}


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_named_mutations_get_the_reference_answer(name: str, real: list[Resource], rules: Rules) -> None:
    """Each mutation, on one resource of every mapped type it applies to: both engines give the same answer,
    and the fast walk never accepts what the models reject."""
    seen: set[str] = set()
    applied = 0
    for resource in real:
        if resource["resourceType"] in seen:
            continue
        seen.add(resource["resourceType"])
        mutated = copy.deepcopy(resource)
        if MUTATIONS[name](mutated):
            applied += 1
            _agree(mutated, rules)
    assert applied, f"mutation {name!r} applied to no resource type"


def test_the_corpus_is_mostly_invalid(real: list[Resource], rules: Rules) -> None:
    """Sanity of the corpus itself: the models reject most mutations (else the parity test proves little)."""
    verdicts = []
    for name, mutate in MUTATIONS.items():
        for resource in real[:40]:
            mutated = copy.deepcopy(resource)
            if mutate(mutated):
                verdicts.append((name, validate_resource_reference(mutated, rules) is not None))
                break
    assert sum(bad for _, bad in verdicts) >= 0.7 * len(verdicts)


JUNK: tuple[Any, ...] = (None, "", " ", "x", "a  b", 0, -1, 1.5, True, [], {}, [None], ["x"], {"x": 1},
                         "2020-02-30", "2020-01-01T00:00:00Z", "urn:uuid:1", "\u0000", "a" * 70, 10**20)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


def _fuzz(resource: Resource, rng: random.Random) -> Resource:
    """One random mutation: a value replaced by junk, a key dropped or added, a value wrapped in a list."""
    out = copy.deepcopy(resource)
    path = rng.choice([p for p in _paths(out) if p != ("resourceType",)])
    parent = out
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    op = rng.randrange(4)
    if op == 0:
        parent[last] = rng.choice(JUNK)
    elif op == 1:
        del parent[last]
    elif op == 2 and isinstance(parent, dict):
        parent[rng.choice(["bogus", "_" + str(last), "extension", "id", "fhir_comments"])] = rng.choice(JUNK)
    else:
        parent[last] = [parent[last]] if not isinstance(parent[last], list) else parent[last][:1][0:1] * 2
    return out


def test_random_mutations_never_pass_the_fast_walk_alone(real: list[Resource], rules: Rules) -> None:
    """1,500 seeded random mutations of real resources: identical answers, no false acceptance."""
    rng = random.Random(17)
    rejected = 0
    for _ in range(1_500):
        _, reference = _agree(_fuzz(rng.choice(real), rng), rules)
        rejected += reference is not None
    assert rejected > 300  # the mutations do hit what the models check


def test_unknown_type_and_engine_switch(rules: Rules, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unknown resourceType gets the reference's reason; the engine is chosen by env or context."""
    bad = {"resourceType": "Nope", "id": "1"}
    with validator_engine("fast"):
        assert validate_resource(bad, rules) == validate_resource_reference(bad, rules)
    monkeypatch.setenv("EHRFM_FHIR_VALIDATOR", "bogus")
    with pytest.raises(ValueError, match="EHRFM_FHIR_VALIDATOR"):
        validate_resource({"resourceType": "Patient", "id": "1"}, rules)
    with pytest.raises(ValueError, match="validator engine"), validator_engine("nope"):
        pass
