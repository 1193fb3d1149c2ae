"""Bounded-memory input for the Spark path: open a file by URI, stream it (plain or gzip) as NDJSON
lines, or read one byte range of a big plain NDJSON file.

The semantics are those of :mod:`ehrfm.ingest.fhir.records` (which reads a whole file at once):
lines are ``content.split(b"\\n")``, numbered from 0, and a damaged gzip stream yields what
:func:`ehrfm.ingest.fhir.records.decompress` would return. A byte range ``[start, end)`` owns the
lines that *start* inside it (the Hadoop convention), so a line straddling a boundary is read once,
by the range where it starts.

A file on a scheme only Hadoop serves (``viewfs://``, ``hdfs://``, ``abfs://``, ``s3a://`` with its
credentials in the cluster's Hadoop config) cannot be opened by an executor's Python worker (no JVM there):
the Spark engine reads its bytes with Spark's own Hadoop reader and hands them to the task, which names them
with :func:`provided`; :func:`open_binary` then serves that URI from memory, so the per-unit code is the
same.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from ehrfm.ingest.fhir import jsonio

CHUNK = 1 << 22  # bytes per read: memory per task stays ~ a few chunks plus the longest line
GZIP_MAGIC = b"\x1f\x8b"
# a top-level line that may be a Patient or Medication (or a resourceType written with JSON escapes):
# only these lines are parsed by the lookup scan; a false positive only costs a parse
LOOKUP_LINE = re.compile(rb'"resourceType"\s*:\s*"(?:Patient"|Medication"|[^"]*\\)')


def local_path(uri: str) -> str | None:
    """The local path of a ``file:`` URI (``file:/x``, ``file:///x``), else ``None``. For the ids this package
    builds (``"file:" + path``, :func:`~ehrfm.ingest.fhir.paths.expand_inputs`) and Hadoop's ``Path``
    strings: the path as it is, NOT percent-decoded (a file may be named ``a%20b``). A user's input goes
    through :func:`ehrfm.storage.local_path` instead, which decodes ``file:`` URIs."""
    if not uri.startswith("file:"):
        return None
    rest = uri[5:]
    return rest[2:] if rest.startswith("///") else rest


# URI -> bytes (or a pyarrow Buffer) of files this process was given rather than opens (see :func:`provided`);
# one Python worker runs one task at a time, and an entry lives only while its unit is processed
_PROVIDED: dict[str, Any] = {}


@contextmanager
def provided(uri: str, data: Any) -> Iterator[None]:
    """While the block runs, :func:`open_binary` serves ``uri`` from ``data`` (``bytes`` or a
    ``pyarrow.Buffer``, not copied): the whole content of the file, read by someone else."""
    _PROVIDED[uri] = data
    try:
        yield
    finally:
        _PROVIDED.pop(uri, None)


def open_binary(uri: str) -> IO[bytes] | Any:
    """Open ``uri`` for binary, seekable reading: bytes given by :func:`provided` from memory, local files
    directly, others through ``pyarrow.fs`` (``s3a://`` is read as ``s3://``; credentials come from pyarrow's
    usual sources)."""
    data = _PROVIDED.get(uri)
    if data is not None:
        import pyarrow as pa

        return pa.BufferReader(data)
    path = local_path(uri)
    if path is not None or "://" not in uri:
        return open(path if path is not None else uri, "rb")  # noqa: SIM115 - the caller closes it
    import pyarrow.fs as pafs

    fs, fpath = pafs.FileSystem.from_uri(uri.replace("s3a://", "s3://", 1))
    return fs.open_input_file(fpath)


def _raw_chunks(f: IO[bytes] | Any) -> Iterator[bytes]:
    while True:
        data = f.read(CHUNK)
        if not data:
            return
        yield data


class Gunzip:
    """Streaming twin of :func:`ehrfm.ingest.fhir.records.decompress` (all members, zero padding
    between them). After iterating :meth:`chunks`: ``problem`` (``None``, "truncated gzip ..." or
    "corrupt gzip: ...") and ``good_len``, the number of output bytes ``decompress`` would keep
    (for a corrupt stream, only the members before the damaged one)."""

    def __init__(self, f: IO[bytes] | Any, limit: int | None = None) -> None:
        self.f, self.limit = f, limit
        self.problem: str | None = None
        self.good_len = 0

    def chunks(self) -> Iterator[bytes]:
        """Decompressed chunks (at most ``limit`` bytes in all when a limit is given)."""
        emitted, done = 0, 0  # bytes yielded; bytes of completed members
        d: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
        for data in _raw_chunks(self.f):
            while data:
                if d is None:  # between members: zero padding, then the next member (if any)
                    data = data.lstrip(b"\x00")
                    if not data:
                        break
                    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                try:
                    out = d.decompress(data)
                except zlib.error as e:
                    self.problem, self.good_len = f"corrupt gzip: {e}", done
                    return
                if self.limit is not None and emitted + len(out) >= self.limit:
                    yield out[: self.limit - emitted]
                    self.good_len = self.limit
                    return
                emitted += len(out)
                yield out
                if d.eof:
                    data, d, done = d.unused_data, None, emitted
                else:
                    data = b""
        if d is not None:
            tail = d.flush()
            if self.limit is not None:
                tail = tail[: self.limit - emitted]
            emitted += len(tail)
            yield tail
            if not d.eof:
                self.problem = "truncated gzip: the file ends before the end of the compressed stream"
        self.good_len = emitted


def segments(chunks: Iterator[bytes]) -> Iterator[tuple[int, bytes]]:
    """``(byte offset, line)`` for every element of ``content.split(b"\\n")`` (the last one included,
    possibly empty), without holding more than one chunk plus the current line."""
    carry = b""
    pos = 0
    for chunk in chunks:
        if not chunk:
            continue
        parts = (carry + chunk).split(b"\n") if carry else chunk.split(b"\n")
        carry = parts.pop()
        for p in parts:
            yield pos, p
            pos += len(p) + 1
    yield pos, carry


def file_chunks(f: IO[bytes] | Any, gz_limit: int | None = None) -> tuple[Iterator[bytes], Gunzip | None]:
    """The decompressed chunks of an open file (gzip detected by its magic bytes) and the
    :class:`Gunzip` reporting problems (``None`` for a plain file)."""
    head = f.read(2)
    f.seek(0)
    if head == GZIP_MAGIC:
        g = Gunzip(f, gz_limit)
        return g.chunks(), g
    return _raw_chunks(f), None


def is_ndjson(head: list[bytes]) -> bool:
    """The detection rule of :func:`ehrfm.ingest.fhir.records.iter_file_records` on the first (up
    to 3) non-blank lines: several lines and the first (or, it being damaged, the second) parses as
    an object."""
    return len(head) > 1 and (_parses_as_object(head[0]) or (len(head) > 2 and _parses_as_object(head[1])))


def _parses_as_object(line: bytes) -> bool:
    try:
        return isinstance(jsonio.loads(line), dict)
    except ValueError:
        return False


def sniff(uri: str, max_bytes: int = 1 << 24) -> tuple[bool, bool | None]:
    """``(gzip, ndjson)`` of a file from its first bytes (read 1 MB at a time); ``ndjson`` is ``None``
    for gzip, or when the first 3 non-blank lines are not within ``max_bytes`` (undecided: the
    caller treats the file whole)."""
    data = b""
    with open_binary(uri) as f:
        while True:
            more = f.read(1 << 20)
            data += more
            if data[:2] == GZIP_MAGIC:
                return True, None
            lines = data.split(b"\n") if not more else data.split(b"\n")[:-1]
            head = [ln for ln in lines if ln.strip()][:3]
            if len(head) == 3 or not more:
                return False, is_ndjson(head)
            if len(data) >= max_bytes:
                return False, None


def count_newlines(f: IO[bytes] | Any, start: int, end: int) -> int:
    """Newlines in bytes ``[start, end)`` of an open plain file."""
    f.seek(start)
    n, left = 0, end - start
    while left > 0:
        data = f.read(min(CHUNK, left))
        if not data:
            break
        n += data.count(b"\n")
        left -= len(data)
    return n


def range_start(f: IO[bytes] | Any, start: int, end: int) -> tuple[int, int] | None:
    """``(offset of the first line starting in [start, end), skipped)`` of a plain file, ``None`` when no
    line starts there; ``skipped`` is 1 when ``start`` falls inside a line (see :func:`range_lines`)."""
    if start == 0:
        return 0, 0
    f.seek(start - 1)
    pos = start - 1
    found = -1
    for data in _raw_chunks(f):
        i = data.find(b"\n")
        if i >= 0:
            found = pos + i
            break
        pos += len(data)
    if found < 0 or found + 1 >= end:
        return None
    return found + 1, int(found != start - 1)


def lines_matching(chunks: Iterator[bytes], pattern: re.Pattern[bytes],
                   stop: int | None = None) -> Iterator[tuple[int, bytes, bool]]:
    """``(offset, line, is_last)`` for the elements of ``b"".join(chunks).split(b"\n")`` in which
    ``pattern`` finds a match, in order: the lines :func:`segments` would give, filtered with
    ``pattern.search(line)``, but without a Python step per line (the pattern runs over whole chunks, and only
    the lines it lands in are cut out and searched again on their own, so a match spanning lines counts for
    nothing). ``is_last``: the element after the final newline. Lines starting at ``stop`` or later are not
    given, and reading stops there."""
    carry, pos = b"", 0  # the unfinished last line and its offset
    for chunk in chunks:
        if not chunk:
            continue
        buf = carry + chunk if carry else chunk
        cut = buf.rfind(b"\n")
        if cut < 0:
            carry = buf
            continue
        i = 0
        while True:
            # the leftmost match at or after i, inside complete lines: every line with a match of its own
            # starts one (the line's text is the same in the buffer), so no such line is skipped
            m = pattern.search(buf, i, cut)
            if m is None:
                break
            s = buf.rfind(b"\n", 0, m.start()) + 1
            e = buf.find(b"\n", m.start())
            if stop is not None and pos + s >= stop:
                return
            line = buf[s:e]
            if pattern.search(line):
                yield pos + s, line, False
            i = e + 1
        carry, pos = buf[cut + 1:], pos + cut + 1
        if stop is not None and pos >= stop:
            return
    if (stop is None or pos < stop) and pattern.search(carry):
        yield pos, carry, True


def range_lines(f: IO[bytes] | Any, start: int, end: int) -> tuple[int, Iterator[tuple[int, bytes]]]:
    """Lines of a plain file that start in ``[start, end)``: ``(skipped, iterator of (offset, line))``.

    ``skipped`` is 1 when ``start`` falls inside a line (owned by the previous range), so the first
    line returned has index ``newlines before start + skipped``. The last line may run past ``end``.
    """
    first = range_start(f, start, end)
    if first is None:
        return 0, iter(())
    p0, skipped = first
    f.seek(p0)

    def lines() -> Iterator[tuple[int, bytes]]:
        for off, line in segments(_raw_chunks(f)):
            if p0 + off >= end:
                return
            yield p0 + off, line

    return skipped, lines()
