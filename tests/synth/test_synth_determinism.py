"""Same seed + N => identical bytes; N patients are a prefix of M > N patients; seeds differ."""

from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow.parquet as pq

from ehrfm.synth import TRUTH_FILE, SynthConfig, generate
from ehrfm.synth.fhir import RESOURCE_TYPES


def _cfg(n: int, seed: int, gzip: bool = False, patients_per_file: int = 0) -> SynthConfig:
    return SynthConfig(n_patients=n, seed=seed, gzip=gzip, patients_per_file=patients_per_file,
                       progress=False)


def _files(folder: Path, suffix: str = ".ndjson") -> dict[str, bytes]:
    return {rt: (folder / f"{rt}{suffix}").read_bytes() for rt in RESOURCE_TYPES}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    generate(_cfg(40, 3), a)
    generate(_cfg(40, 3), b)
    assert _files(a) == _files(b)
    assert (a / TRUTH_FILE).read_bytes() == (b / TRUTH_FILE).read_bytes()


def test_prefix_property(tmp_path: Path) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    generate(_cfg(25, 5), small)
    generate(_cfg(60, 5), big)
    fs, fb = _files(small), _files(big)
    for rt in RESOURCE_TYPES:
        assert fs[rt], rt
        assert fb[rt].startswith(fs[rt]), f"{rt}: 25 patients are not a prefix of 60"
        assert len(fb[rt]) > len(fs[rt]) or rt == "Medication"
    ts = pq.read_table(small / TRUTH_FILE)
    tb = pq.read_table(big / TRUTH_FILE)
    assert ts.num_rows > 0
    assert tb.slice(0, ts.num_rows).equals(ts)


def test_other_seed_differs(tmp_path: Path) -> None:
    generate(_cfg(10, 1), tmp_path / "s1")
    generate(_cfg(10, 2), tmp_path / "s2")
    assert _files(tmp_path / "s1")["Observation"] != _files(tmp_path / "s2")["Observation"]


def test_gzip_is_deterministic_and_same_content(tmp_path: Path) -> None:
    generate(_cfg(15, 9, gzip=True), tmp_path / "g1")
    generate(_cfg(15, 9, gzip=True), tmp_path / "g2")
    generate(_cfg(15, 9), tmp_path / "plain")
    g1, g2 = _files(tmp_path / "g1", ".ndjson.gz"), _files(tmp_path / "g2", ".ndjson.gz")
    assert g1 == g2
    plain = _files(tmp_path / "plain")
    for rt in RESOURCE_TYPES:
        assert gzip.decompress(g1[rt]) == plain[rt]
    assert not (tmp_path / "g1" / "Patient.ndjson").exists()


def test_shards_concatenate_to_the_single_files(tmp_path: Path) -> None:
    from ehrfm.synth.generate import population_files

    generate(_cfg(25, 8), tmp_path / "one")
    generate(_cfg(25, 8, patients_per_file=10), tmp_path / "sh")
    one = _files(tmp_path / "one")
    for rt in RESOURCE_TYPES:
        if rt == "Medication":
            assert (tmp_path / "sh" / "Medication.ndjson").read_bytes() == one[rt]
            continue
        shards = sorted((tmp_path / "sh").glob(f"{rt}.*.ndjson"))
        assert [p.name for p in shards] == [f"{rt}.{k:03d}.ndjson" for k in range(3)]
        assert b"".join(p.read_bytes() for p in shards) == one[rt]
    assert (tmp_path / "sh" / "Patient.002.ndjson").read_text().count("\n") == 5
    # regenerating with another layout leaves no stale file behind
    generate(_cfg(5, 8), tmp_path / "sh")
    names = [p.name for p in population_files(tmp_path / "sh")]
    assert names == sorted(f"{rt}.ndjson" for rt in RESOURCE_TYPES)
