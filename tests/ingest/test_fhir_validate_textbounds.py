"""The JSON limits proved from the text (:mod:`ehrfm.ingest.fhir.textbounds`) against the reference walk
(:func:`ehrfm.ingest.fhir.jsonio.check_bounds`) on random documents full of strings that look like JSON."""

from __future__ import annotations

import json
import random
from typing import Any

import orjson
import pytest

from ehrfm.ingest.fhir import jsonio, textbounds

TRICKY = ['"', "\\", "\\\\", '\\"', "[", "]", "{", "}", ",", "\\n", "é", "\u2028", "a", " ", "\\u005c"]


def _text(rng: random.Random) -> str:
    return "".join(rng.choice(TRICKY) for _ in range(rng.randrange(6)))


def _doc(rng: random.Random, depth: int) -> Any:
    roll = rng.random()
    if depth > 7 or roll < 0.35:
        return rng.choice([_text(rng), 1, -2.5, True, None])
    if roll < 0.65:
        return [_doc(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {_text(rng) + str(i): _doc(rng, depth + 1) for i in range(rng.randrange(4))}


def _depth(obj: Any) -> int:
    if not isinstance(obj, (dict, list)):
        return 0
    items = obj.values() if isinstance(obj, dict) else obj
    return 1 + max((_depth(v) for v in items), default=0)


def _empty(obj: Any) -> int:
    if not isinstance(obj, (dict, list)):
        return 0
    items = list(obj.values() if isinstance(obj, dict) else obj)
    return (not items) + sum(_empty(v) for v in items)


@pytest.mark.parametrize("dumps", [json.dumps, lambda o: json.dumps(o, ensure_ascii=False, indent=1),
                                   lambda o: orjson.dumps(o)])
def test_bounds_equal_the_reference_walk(dumps: Any) -> None:
    """Depth exactly; values exactly up to one per empty container (an upper bound, never below)."""
    rng = random.Random(5)
    for _ in range(400):
        doc = _doc(rng, 0)
        text = dumps(doc)
        depth, values = textbounds.bounds(text)
        assert depth == _depth(doc)
        count = jsonio.check_bounds(doc, 10**6, 10**9) if isinstance(doc, (dict, list)) else 1
        assert values == count + _empty(doc)


def test_within_says_not_proved_past_either_limit() -> None:
    """Over either limit the text check declines (the caller then runs the reference, which raises)."""
    deep = "[" * 70 + "]" * 70
    assert not textbounds.within(deep, 64, 10**6) and textbounds.within(deep, 70, 10**6)
    wide = json.dumps(list(range(1000)))
    assert not textbounds.within(wide, 64, 1000) and textbounds.within(wide, 64, 1001)
    with pytest.raises(jsonio.JsonLimitError):
        jsonio.check_bounds(json.loads(wide), 64, 1000)
    assert textbounds.within(b'"[[[[[["', 2, 10)  # brackets in a string are not nesting
