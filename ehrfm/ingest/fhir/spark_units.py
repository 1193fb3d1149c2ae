"""Work units of the Spark path and the per-unit functions run on executors (no Spark import).

A *unit* is a whole file, or a byte range ``[start, end)`` of a big plain NDJSON file. Every unit
is streamed (:mod:`ehrfm.ingest.fhir.streams`), so a task holds a few MB plus the rows it has not
yet handed back, whatever the file size; only Bundle / single-document files are read whole.

1. :func:`scan_unit` (cheap: no mapping) finds each unit's format, newline count (line numbers of
   the next ranges), gzip problem, and (``lookups``) the lookup records: birth floors and Medications.
   Only the lines that may be a Patient or a Medication are parsed.
2. :func:`map_unit` maps every record with given lookups: the *global* ones of step 1 make every record
   final in this one pass (``complete``, the local engine with NDJSON inputs); otherwise records that lack
   a lookup or are rejected are kept as ``P`` rows for the join pass.
   :func:`map_unit_joined` (the Spark engine) is :func:`map_unit` with only the unit's own lookups, which it
   also emits as ``B`` / ``M`` rows: nothing per patient passes through the driver, the cross-unit lookups
   reach the records by Spark joins (see :mod:`ehrfm.ingest.fhir.spark_ingest`).
   :func:`map_unit_given` is the same for a whole file whose bytes Spark's Hadoop reader read (a scheme the
   executors cannot open themselves): its facts are found in the same task, from memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ehrfm.ingest.fhir import jsonio
from ehrfm.ingest.fhir.bundle import lookups
from ehrfm.ingest.fhir.ids import subject_id_for
from ehrfm.ingest.fhir.mapper import birth_floor
from ehrfm.ingest.fhir.records import Record, iter_file_records, line_record
from ehrfm.ingest.fhir.rules import Rules, load_rules
from ehrfm.ingest.fhir.spark_rows import map_records, row
from ehrfm.ingest.fhir.streams import (
    LOOKUP_LINE,
    _raw_chunks,
    count_newlines,
    file_chunks,
    is_ndjson,
    lines_matching,
    open_binary,
    provided,
    range_lines,
    range_start,
    segments,
)

UNIT_SCHEMA = "path string, start long, end long, mode string"
SCAN_SCHEMA = ("kind string, path string, start long, newlines long, fmt string, problem string, good_len "
               "long, subject_id long, floor long, med_key string, payload string, offset long")
_SCAN_COLS = [c.strip().split(" ")[0] for c in SCAN_SCHEMA.split(",")]
NDJSON, WHOLE = "ndjson", "whole"


def scan_row(kind: str, **values: Any) -> tuple[Any, ...]:
    """A SCAN_SCHEMA tuple with ``kind`` and the given columns set (others null)."""
    out: list[Any] = [None] * len(_SCAN_COLS)
    out[0] = kind
    for k, v in values.items():
        out[_SCAN_COLS.index(k)] = v
    return tuple(out)


class _Lookups:
    """Birth floors (minimum per subject) and Medications (first by byte offset) of one unit."""

    def __init__(self, rules: Rules, enabled: bool = True) -> None:
        self.rules, self.enabled = rules, enabled
        self.births: dict[int, int] = {}
        self.meds: dict[str, tuple[int, dict[str, Any]]] = {}

    def line(self, offset: int, line: bytes) -> None:
        if not self.enabled or not LOOKUP_LINE.search(line):
            return
        try:
            res = jsonio.loads(line)
        except ValueError:
            return
        if not isinstance(res, dict) or not isinstance(res.get("id"), str) or not res["id"]:
            return
        if res.get("resourceType") == "Patient":
            floor = birth_floor(res, self.rules)
            if floor is not None:
                sid = subject_id_for(res["id"])
                self.births[sid] = min(floor, self.births.get(sid, floor))
        elif res.get("resourceType") == "Medication":
            self.meds.setdefault(f"Medication/{res['id']}", (offset, res))

    def rows(self, path: str) -> Iterator[tuple[Any, ...]]:
        for sid, floor in self.births.items():
            yield scan_row("B", path=path, subject_id=sid, floor=floor)
        for key, (offset, res) in self.meds.items():
            yield scan_row("M", path=path, med_key=key, payload=jsonio.dumps(res), offset=offset)


def _head(segs: Iterator[tuple[int, bytes]], count: int = 3) -> tuple[list[tuple[int, bytes]], list[bytes]]:
    """Pull segments until ``count`` non-blank lines are seen: (segments read, non-blank lines)."""
    buffered: list[tuple[int, bytes]] = []
    head: list[bytes] = []
    for seg in segs:
        buffered.append(seg)
        if seg[1].strip():
            head.append(seg[1])
            if len(head) == count:
                break
    return buffered, head


def scan_unit(path: str, start: int, end: int, mode: str, lookups: bool = True) -> Iterator[tuple[Any, ...]]:
    """Step 1 for one unit: a ``U`` row (format, newlines, gzip problem and kept length) and the
    unit's ``B`` (birth floor) and ``M`` (Medication) lookup rows.

    ``lookups=False``: the ``U`` row only, read as little as it needs (a range's newlines are counted, its
    lines not searched; a plain file unit, the only unit of its file, is not read past its first lines: its
    ``newlines`` are not needed and left null)."""
    found = _Lookups(load_rules(), lookups)
    with open_binary(path) as f:
        if mode == "range":
            newlines = count_newlines(f, start, end)
            first = range_start(f, start, end) if lookups else None
            if first is not None:
                f.seek(first[0])
                for offset, line, _ in lines_matching(_raw_chunks(f), LOOKUP_LINE, end - first[0]):
                    found.line(first[0] + offset, line)
            yield scan_row("U", path=path, start=start, newlines=newlines, fmt=NDJSON)
            yield from found.rows(path)
            return
        chunks, gz = file_chunks(f)
        _, head = _head(segments(chunks))
        if not is_ndjson(head):  # a document (or empty / unreadable): read whole in step 2
            yield scan_row("U", path=path, start=0, fmt=WHOLE)
            return
        if not lookups and gz is None:  # plain: no gzip problem to find, no line number needed
            yield scan_row("U", path=path, start=0, fmt=NDJSON)
            return
        f.seek(0)  # from the start again (the head was a few lines of the first chunk)
        chunks, gz = file_chunks(f)
        n = _lookup_lines(found, chunks, lambda: gz is None or gz.problem is None)
        if gz is not None and gz.problem is not None and gz.problem.startswith("corrupt"):
            # the damaged member's lines are not records (decompress keeps whole members only): redo the
            # lookups on the kept bytes (rare, so the common path reads once)
            found = _Lookups(found.rules)
            f.seek(0)
            _lookup_lines(found, file_chunks(f, gz.good_len)[0], lambda: False)
    yield scan_row("U", path=path, start=0, newlines=n - 1, fmt=NDJSON, problem=gz.problem if gz else None,
                   good_len=gz.good_len if gz else None)
    yield from found.rows(path)


def _lookup_lines(found: _Lookups, chunks: Iterator[bytes], last_is_record: Callable[[], bool]) -> int:
    """Feed every record line that may be a lookup (:data:`LOOKUP_LINE`) to ``found``; the last segment
    only when ``last_is_record()`` (asked after the stream ends). Returns the number of segments
    (newlines + 1), counted per chunk."""
    newlines = 0

    def counted() -> Iterator[bytes]:
        nonlocal newlines
        for chunk in chunks:
            newlines += chunk.count(b"\n")
            yield chunk

    for offset, line, last in lines_matching(counted(), LOOKUP_LINE):
        if not last or last_is_record():
            found.line(offset, line)
    return newlines + 1


def _ndjson_records(path: str, start: int, end: int, mode: str, base: int, problem: str | None,
                    good_len: int | None) -> Iterator[Record]:
    """Records of an NDJSON unit, streamed; ``record_index`` is the line number in the file."""
    with open_binary(path) as f:
        if mode == "range":
            skipped, lines = range_lines(f, start, end)
            for j, (_, line) in enumerate(lines):
                if line.strip():
                    yield line_record(path, base + skipped + j, line)
            return
        chunks, _ = file_chunks(f, good_len)
        prev: tuple[int, bytes] | None = None
        i = -1
        for i, (_, line) in enumerate(segments(chunks)):
            if prev is not None and prev[1].strip():
                yield line_record(path, *prev)
            prev = (i, line)
        if problem is not None:  # the last line is cut mid-record (or empty): it is the truncation record
            yield Record(path, i, error=f"{problem} (after {i} complete lines)")
        elif prev is not None and prev[1].strip():
            yield line_record(path, *prev)


class MinFloors(Mapping[int, int]):
    """Read-only union of two birth-floor maps (the lower floor wins), without copying either."""

    def __init__(self, first: Mapping[int, int], second: Mapping[int, int]) -> None:
        self.first, self.second = first, second

    def __getitem__(self, sid: int) -> int:
        a, b = self.first.get(sid), self.second.get(sid)
        if a is None and b is None:
            raise KeyError(sid)
        return min(x for x in (a, b) if x is not None)

    def __iter__(self) -> Iterator[int]:
        yield from self.first
        yield from (k for k in self.second if k not in self.first)

    def __len__(self) -> int:
        return sum(1 for _ in self)


class FirstMeds(Mapping[str, dict[str, Any]]):
    """Read-only union of two Medication maps (the first map wins), without copying either."""

    def __init__(self, first: Mapping[str, dict[str, Any]], second: Mapping[str, dict[str, Any]]) -> None:
        self.first, self.second = first, second

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self.first[key] if key in self.first else self.second[key]

    def __iter__(self) -> Iterator[str]:
        yield from self.first
        yield from (k for k in self.second if k not in self.first)

    def __len__(self) -> int:
        return sum(1 for _ in self)


def map_unit(unit: Mapping[str, Any], births: Mapping[int, int], meds: Mapping[str, dict[str, Any]],
             complete: bool,
             validate: str, max_time_us: int, every: int,
             fhir_version: str = "auto") -> Iterator[tuple[Any, ...]]:
    """Step 2 for one unit (a row of the scan's ``U`` output plus ``base``, the line number of its
    first byte): ROW_SCHEMA tuples (see :mod:`ehrfm.ingest.fhir.spark_rows`).

    ``births`` / ``meds``: the global lookups of the NDJSON inputs; ``complete``: they are all the
    lookups there are (no document inputs), so every record is final here. ``fhir_version``: the version
    resources are validated in (``auto``: detected per resource).
    """
    path = unit["path"]
    if unit["fmt"] == NDJSON:
        records: Iterator[Record] | list[Record] = _ndjson_records(
            path, unit["start"], unit["end"], unit["mode"], unit["base"], unit["problem"], unit["good_len"])
        yield from map_records(path, records, births, meds, complete, validate, max_time_us, every,
                               fhir_version)
        return
    with open_binary(path) as f:
        data = f.read()
    rules = load_rules()
    records = list(iter_file_records(path, data))
    local_births, local_meds = lookups(records, rules)
    for sid, floor in local_births.items():
        yield row("B", subject_id=sid, floor=floor)
    for rec in records:
        if rec.error is None and rec.resource_type == "Medication" and rec.resource_id:
            yield row("M", med_key=f"Medication/{rec.resource_id}", payload=jsonio.dumps(rec.resource),
                      source_file=path, record_index=rec.record_index)
    yield from map_records(path, records, MinFloors(local_births, births), FirstMeds(local_meds, meds),
                           complete,
                           validate, max_time_us, every, fhir_version)


def map_unit_joined(unit: Mapping[str, Any], validate: str, max_time_us: int, every: int,
                    fhir_version: str = "auto") -> Iterator[tuple[Any, ...]]:
    """Step 2 of the Spark engine for one unit (as :func:`map_unit`): every record mapped with the unit's
    *own* lookups only, which are also emitted (``B`` birth floors, ``M`` Medications with their location,
    as :func:`scan_unit` finds them in NDJSON and :func:`map_unit` in documents), so that the records that
    need another unit's lookup (``P`` rows) get it from a Spark join of these rows.

    Why the output equals a pass with the global lookups: a record is final here only when it was mapped
    and not rejected with the unit's birth floor of its subject (the global floor, a minimum over more
    Patient records, is lower or equal, so the check still passes; the floor decides nothing else); an
    NDJSON unit's own Medications are not used (the global choice, first by file and byte offset, may be
    another unit's copy), so every record referencing one waits for the join. Documents keep their own
    Medications first, as :func:`map_unit` always did.
    """
    births: dict[int, int] = {}
    if unit["fmt"] == NDJSON:
        # a second, cheap read of the unit: only the lines that may be a Patient or a Medication are parsed
        path = unit["path"]
        for r in scan_unit(path, unit["start"], unit["end"], unit["mode"]):
            kind = r[0]
            if kind == "B":
                sid, floor = r[_SCAN_COLS.index("subject_id")], r[_SCAN_COLS.index("floor")]
                births[sid] = floor
                yield row("B", subject_id=sid, floor=floor)
            elif kind == "M":
                yield row("M", med_key=r[_SCAN_COLS.index("med_key")], payload=r[_SCAN_COLS.index("payload")],
                          source_file=path, record_index=r[_SCAN_COLS.index("offset")])
    yield from map_unit(unit, births, {}, False, validate, max_time_us, every, fhir_version)


def map_unit_given(unit: Mapping[str, Any], data: Any, validate: str, max_time_us: int, every: int,
                   fhir_version: str = "auto") -> Iterator[tuple[Any, ...]]:
    """:func:`map_unit_joined` for a whole-file unit (``path``, ``start`` 0, ``end``, ``mode`` ``file``) whose
    content ``data`` (``bytes`` or a ``pyarrow.Buffer``) was read by Spark's Hadoop reader: the file is opened
    from memory (:func:`~ehrfm.ingest.fhir.streams.provided`), its facts (format, gzip problem and kept
    length; the scan step's ``U`` row) are found here rather than by the scan job, which would need to read
    the file again, and rows name ``unit["path"]`` exactly as for a file opened by path."""
    path = unit["path"]
    with provided(path, data):
        facts = next(scan_unit(path, 0, unit["end"], "file", lookups=False))
        fact = {c: facts[_SCAN_COLS.index(c)] for c in ("fmt", "problem", "good_len")}
        yield from map_unit_joined({**unit, **fact, "base": 0}, validate, max_time_us, every, fhir_version)
