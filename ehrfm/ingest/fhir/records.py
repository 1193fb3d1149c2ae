"""Split one input file (bytes) into FHIR records: Bundle entries or NDJSON lines.

Each file is detected by content, not by name: a Bundle (or single resource) JSON document, or
NDJSON (one resource per line), plain or gzip. Whatever cannot be read becomes a record carrying an
``error`` (malformed JSON line or file, truncated or corrupt gzip, an entry without a resource), so
the caller can reject it with its location: nothing is dropped here.

Bundle-local references (``urn:uuid:…`` fullUrls) are rewritten to ``Type/id`` in the fields the
mapper follows, so a resource carries everything it needs once it leaves its Bundle.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, overload

from ehrfm.ingest.fhir import jsonio

# fields holding the references the mapper follows (subject, encounter, medication)
_REF_FIELDS = ("subject", "patient", "encounter", "context", "medicationReference")


_T = TypeVar("_T")


class _read_once(Generic[_T]):  # noqa: N801 - used as a decorator, like cached_property
    """``functools.cached_property`` without its lock: the first read stores the value in the instance
    dict, which later reads find first (a non-data descriptor). Python 3.11's cached_property takes an
    RLock on every first read, which made it slower than a plain property for a record read ~4 times."""

    def __init__(self, fn: Callable[[Any], _T]) -> None:
        self.fn, self.name = fn, fn.__name__
        self.__doc__ = fn.__doc__

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _read_once[_T]: ...
    @overload
    def __get__(self, obj: object, owner: type | None = None) -> _T: ...
    def __get__(self, obj: object | None, owner: type | None = None) -> _T | _read_once[_T]:
        if obj is None:
            return self
        value = obj.__dict__[self.name] = self.fn(obj)
        return value


@dataclass
class Record:
    """One input record: a resource, or an ``error`` saying why the record could not be read."""

    source_file: str
    record_index: int
    resource: dict[str, Any] | None = None
    error: str | None = None
    field: str | None = None

    # cached: the population path asks ~4 times per record; a record's resource is never replaced, and
    # rewriting its references (Bundles) leaves its type and id alone
    @_read_once
    def resource_type(self) -> str | None:
        """``resourceType`` of the resource (``None`` for unreadable records)."""
        rt = self.resource.get("resourceType") if self.resource else None
        return rt if isinstance(rt, str) else None

    @_read_once
    def resource_id(self) -> str | None:
        """Logical ``id`` of the resource, when it has one."""
        rid = self.resource.get("id") if self.resource else None
        return rid if isinstance(rid, str) else None


def decompress(data: bytes) -> tuple[bytes, str | None]:
    """``(bytes, problem)``: gunzipped content (all members) when ``data`` is gzip, else ``data``.

    A truncated stream returns what could be decompressed and ``problem`` = "truncated gzip ...";
    a corrupt one returns the bytes decompressed before the damage and "corrupt gzip: ...".
    """
    if data[:2] != b"\x1f\x8b":
        return data, None
    out: list[bytes] = []
    rest = data
    while rest:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            out.append(d.decompress(rest))
            out.append(d.flush())
        except zlib.error as e:
            return b"".join(out), f"corrupt gzip: {e}"
        if not d.eof:
            return b"".join(out), "truncated gzip: the file ends before the end of the compressed stream"
        rest = d.unused_data.lstrip(b"\x00")
    return b"".join(out), None


def _parses_as_object(line: bytes) -> bool:
    try:
        return isinstance(jsonio.loads(line), dict)
    except ValueError:
        return False


def _nonblank_lines(content: bytes, count: int) -> list[bytes]:
    """The first ``count`` non-blank lines (without splitting the whole, possibly pretty-printed, file)."""
    found: list[bytes] = []
    pos = 0
    while len(found) < count and pos < len(content):
        nl = content.find(b"\n", pos)
        end = len(content) if nl < 0 else nl
        if content[pos:end].strip():
            found.append(content[pos:end])
        pos = end + 1
    return found


def iter_file_records(source_file: str, data: bytes) -> Iterator[Record]:
    """Records of one file (see module doc). ``record_index``: entry index (Bundle) or line (NDJSON),
    0-based."""
    content, problem = decompress(data)
    head = _nonblank_lines(content, 3)
    if problem is None and not head:
        yield Record(source_file, 0, error="empty file")
        return
    # NDJSON: several lines and the first parses as an object (or, the first being damaged, the second
    # does); a pretty-printed document's first line ("{") never parses on its own
    ndjson = len(head) > 1 and (
        _parses_as_object(head[0]) or (len(head) > 2 and _parses_as_object(head[1]))
    )
    if ndjson:
        yield from _ndjson_records(source_file, content.split(b"\n"), problem)
    elif problem is not None:
        yield Record(source_file, 0, error=problem)
    else:
        yield from _document_records(source_file, content)


def _ndjson_records(source_file: str, lines: list[bytes], problem: str | None) -> Iterator[Record]:
    if problem is not None:
        # the last line is cut mid-record (or empty): it is reported as the truncation, not as bad JSON
        last = len(lines) - 1
        for i, line in enumerate(lines[:last]):
            if line.strip():
                yield line_record(source_file, i, line)
        yield Record(source_file, last, error=f"{problem} (after {last} complete lines)")
        return
    for i, line in enumerate(lines):
        if line.strip():
            yield line_record(source_file, i, line)


def line_record(source_file: str, index: int, line: bytes) -> Record:
    """One NDJSON line (non-blank) as a record: the resource, or the reason it cannot be read."""
    try:
        obj = jsonio.loads(line)
    except ValueError as e:
        return Record(source_file, index, error=f"malformed JSON: {e}")
    if not isinstance(obj, dict):
        return Record(source_file, index,
                      error=f"JSON value is a {type(obj).__name__}, not a resource object")
    if obj.get("resourceType") == "Bundle":
        return Record(source_file, index, resource=obj, error="a Bundle inside NDJSON is not supported",
                      field="resourceType")
    return Record(source_file, index, resource=obj)


def _document_records(source_file: str, content: bytes) -> Iterator[Record]:
    try:
        doc = jsonio.loads(content)
    except ValueError as e:
        yield Record(source_file, 0, error=f"malformed JSON file: {e}")
        return
    if not isinstance(doc, dict):
        yield Record(source_file, 0, error=f"JSON document is a {type(doc).__name__}, not a resource")
        return
    if doc.get("resourceType") != "Bundle":
        yield Record(source_file, 0, resource=doc)
        return
    entries = doc.get("entry") or []
    if not isinstance(entries, list):
        yield Record(source_file, 0, resource=doc, error="Bundle.entry is not a list", field="entry")
        return
    yield from bundle_entry_records(source_file, entries)


def bundle_entry_records(source_file: str, entries: list[Any], copy: bool = False) -> Iterator[Record]:
    """Records of Bundle entries, with ``urn:uuid:`` references rewritten to ``Type/id``.

    ``copy``: work on shallow copies of the resources, leaving a caller's Bundle unmodified (serving);
    not needed for Bundles this module parsed itself.
    """
    full_urls: dict[str, str] = {}
    resources: list[dict[str, Any] | None] = []
    for entry in entries:
        res = entry.get("resource") if isinstance(entry, dict) else None
        url = entry.get("fullUrl") if isinstance(entry, dict) else None
        if not isinstance(res, dict):
            res = None
        elif copy:  # the rewrites below replace top-level keys only, so a shallow copy suffices
            res = dict(res)
        resources.append(res)
        if res is not None and isinstance(url, str) and isinstance(res.get("resourceType"), str):
            if "id" not in res and url.startswith("urn:uuid:"):
                res["id"] = url[9:]  # transaction bundles: the server would assign it; the uuid is our id
            if isinstance(res.get("id"), str):
                full_urls[url] = f"{res['resourceType']}/{res['id']}"
    for i, res in enumerate(resources):
        if res is None:
            yield Record(source_file, i, error="Bundle entry without a resource", field="entry.resource")
            continue
        if full_urls:
            _rewrite_refs(res, full_urls)
        yield Record(source_file, i, resource=res)


def _rewrite_refs(res: dict[str, Any], full_urls: dict[str, str]) -> None:
    for key in _REF_FIELDS:
        ref = res.get(key)
        if isinstance(ref, dict) and ref.get("reference") in full_urls:
            res[key] = {**ref, "reference": full_urls[ref["reference"]]}
    med = res.get("medication")  # R5 CodeableReference
    if isinstance(med, dict) and isinstance(med.get("reference"), dict):
        inner = med["reference"]
        if inner.get("reference") in full_urls:
            res["medication"] = {**med, "reference": {**inner, "reference": full_urls[inner["reference"]]}}
