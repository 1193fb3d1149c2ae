"""Streaming input of the Spark path (no Spark): lines, byte ranges and gzip give exactly what the
whole-file reader (:mod:`ehrfm.ingest.fhir.records`) gives."""

from __future__ import annotations

import gzip
import random
import re
from pathlib import Path

import pytest

from ehrfm.ingest.fhir import streams
from ehrfm.ingest.fhir.records import decompress
from ehrfm.ingest.fhir.streams import LOOKUP_LINE, lines_matching, segments

CONTENT = b"".join([b'{"a": 1}\n', b"\n", b"x" * 37 + b"\n", b"\n\n", b'{"b": "' + b"y" * 300 + b'"}\n',
                    b"tail"])


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 1 << 20])
def test_segments_match_split(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, chunk: int) -> None:
    monkeypatch.setattr(streams, "CHUNK", chunk)
    for content in (CONTENT, CONTENT + b"\n", b"", b"\n"):
        got = list(streams.segments(iter([content[i:i + chunk] for i in range(0, len(content), chunk)])))
        assert [line for _, line in got] == content.split(b"\n")
        assert all(content[off:off + len(line)] == line for off, line in got)


@pytest.mark.parametrize("split", [1, 2, 9, 10, 38, 50, 1000])
def test_ranges_cover_every_line_once_with_its_number(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      split: int) -> None:
    monkeypatch.setattr(streams, "CHUNK", 5)  # reads smaller than lines and ranges
    for content in (CONTENT, CONTENT + b"\n"):
        path = tmp_path / "f.ndjson"
        path.write_bytes(content)
        expected = [(i, line) for i, line in enumerate(content.split(b"\n")) if line]
        got, base = [], 0
        with streams.open_binary(f"file:{path}") as f:
            for start in range(0, len(content), split):
                end = min(start + split, len(content))
                skipped, lines = streams.range_lines(f, start, end)
                got += [(base + skipped + j, line) for j, (_, line) in enumerate(lines) if line]
                base += streams.count_newlines(f, start, end)
        assert got == expected  # a line straddling a boundary is read once, by the range where it starts


def _members(*parts: bytes) -> bytes:
    return b"".join(gzip.compress(p) for p in parts)


@pytest.mark.parametrize("data", [
    _members(CONTENT),
    _members(b"one\ntwo\n", b"three\n") + b"\x00" * 5 + gzip.compress(b"four"),  # members and zero padding
    _members(CONTENT)[:-12],                                                        # truncated
    _members(b"good\n") + gzip.compress(b"bad member\n")[:12] + b"\xff" * 40,        # corrupt second member
    b"\x1f\x8bnot really gzip",
])
def test_gunzip_stream_matches_decompress(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          data: bytes) -> None:
    monkeypatch.setattr(streams, "CHUNK", 4)
    path = tmp_path / "f.gz"
    path.write_bytes(data)
    content, problem = decompress(data)
    with open(path, "rb") as f:
        chunks, gz = streams.file_chunks(f)
        streamed = b"".join(chunks)
        assert gz is not None and gz.problem == problem
        assert streamed[: gz.good_len] == content and gz.good_len == len(content)
        f.seek(0)
        assert b"".join(streams.file_chunks(f, gz.good_len)[0]) == content


def test_sniff_and_lookup_prefilter(tmp_path: Path) -> None:
    nd = tmp_path / "a.ndjson"
    nd.write_bytes(b'{"resourceType": "Patient", "id": "1"}\n{"resourceType": "Observation"}\n')
    doc = tmp_path / "b.json"
    doc.write_bytes(b'{\n  "resourceType": "Bundle",\n  "entry": []\n}\n')
    gz = tmp_path / "c.ndjson.gz"
    gz.write_bytes(gzip.compress(b"{}\n{}\n"))
    assert streams.sniff(f"file:{nd}") == (False, True)
    assert streams.sniff(str(doc)) == (False, False)
    assert streams.sniff(f"file://{gz}") == (True, None)
    assert streams.LOOKUP_LINE.search(b'{"id": "m", "resourceType" : "Medication"}')
    assert streams.LOOKUP_LINE.search(b'{"resourceType":"Pati\\u0065nt"}')  # escapes: parsed to be sure
    assert not streams.LOOKUP_LINE.search(b'{"resourceType": "MedicationRequest", "subject": "Patient/1"}')


@pytest.mark.parametrize("seed", range(40))
def test_lines_matching_is_segments_filtered(seed: int) -> None:
    """The chunk-wise search gives exactly the lines that a per-line search of :func:`segments` gives,
    whatever the chunking and however matches straddle newlines; ``stop`` cuts at line starts."""
    rng = random.Random(seed)
    parts = [b'{"resourceType":"Patient","id":"1"}', b'{"resourceType" : "Medication"}', b'"resourceType"',
             b':"Patient"', b'{"resourceType":"Observation"}', b'"resourceType":"Pa\\u0074ient"', b"",
             b"x" * 50, b'"resourceType":', b'"Medication"']
    seps = [b"\n", b"", b" ", b"\n\n"]
    data = b"".join(rng.choice(parts) + rng.choice(seps) for _ in range(rng.randint(0, 60)))
    cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 8))))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    pattern = rng.choice([LOOKUP_LINE, re.compile(rb'"resourceType"\s*:\s*"Patient"')])
    segs = list(segments(iter(chunks)))
    stop = rng.choice([None, rng.randint(0, len(data) + 1)])
    want = [(off, line, i == len(segs) - 1) for i, (off, line) in enumerate(segs)
            if pattern.search(line) and (stop is None or off < stop)]
    assert list(lines_matching(iter(chunks), pattern, stop)) == want
