"""The JSON depth and value-count limits proved from the raw text, in C and NumPy instead of a Python walk.

:func:`ehrfm.ingest.fhir.jsonio.check_bounds` (the reference) visits every value of the parsed document:
~0.1 s for a 10 MB Bundle of 400k values. The text gives both answers faster. Outside strings (escaped
backslashes and escaped quotes removed first, then only quotes, brackets and commas kept; a character is
inside a string after an odd number of quotes):

- values: each member of an array or object after its first follows a comma, so the document holds at
  most ``1 + commas + containers`` values (the root, plus one first member per container);
- depth: the largest running count of ``[``/``{`` minus ``]``/``}``.

Both are upper bounds of what the parsed document holds (a repeated object key keeps one value), so
:func:`within` may only say "proved within the limits"; otherwise the caller runs the reference walk,
which raises with its own message. Only for text that has already parsed as JSON.
"""

from __future__ import annotations

import numpy as np

_KEEP = b'"[]{},'
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_QUOTE, _COMMA = ord('"'), ord(",")
_STEP = np.zeros(256, dtype=np.int32)  # +1 opens a container, -1 closes one
_STEP[[ord("["), ord("{")]], _STEP[[ord("]"), ord("}")]] = 1, -1


def bounds(text: str | bytes) -> tuple[int, int]:
    """``(depth, values)`` upper bounds of valid JSON ``text``: the deepest container nesting (root
    container = 1, a scalar root = 0) and the number of values (the root included)."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else bytes(text)
    # escapes first: an escaped backslash could otherwise pair with the character after it
    if b"\\" in raw:
        raw = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    kept = np.frombuffer(raw.translate(None, _DROP), dtype=np.uint8)
    if kept.size == 0:
        return 0, 1
    outside = (np.cumsum(kept == _QUOTE) & 1) == 0
    step = np.where(outside, _STEP[kept], 0)
    depth = int(np.cumsum(step).max())
    values = 1 + int(np.count_nonzero((kept == _COMMA) & outside)) + int(np.count_nonzero(step == 1))
    return max(depth, 0), values


def within(text: str | bytes, max_depth: int, max_elements: int) -> bool:
    """True when parsed-valid JSON ``text`` is proved to hold at most ``max_elements`` values nested at most
    ``max_depth`` deep; False means "not proved" (run the reference walk on the parsed document)."""
    depth, values = bounds(text)
    return depth <= max_depth and values <= max_elements
