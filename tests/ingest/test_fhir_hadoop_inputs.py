"""The Spark FHIR engine reads inputs on a scheme only Hadoop serves (``viewfs://``, standing in for
``hdfs://``, ``abfs://`` or an ``s3a://`` bucket whose credentials live in the cluster's Hadoop config):
the executors' Python workers cannot open such a file, so Spark's own Hadoop reader reads it and the
per-unit code maps it from memory. The dataset equals a run on the same files as local paths (which the
executors open themselves, big plain NDJSON cut into byte ranges), except that rejects and examples name
the ``viewfs://`` URI."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest

from ehrfm.config.base import ConfigError
from ehrfm.ingest.fhir import spark_ingest
from ehrfm.synth import SynthConfig, generate

pytestmark = pytest.mark.spark

MAX_TIME = 1_893_456_000_000_000  # 2030-01-01


def test_which_inputs_hadoop_reads() -> None:
    """Local files and the object stores pyarrow serves are opened by the executors; every other scheme is
    read by Hadoop."""
    for uri in ("/x/a.json", "file:/x/a.json", "file:///x/a.json", "s3://b/a.json", "gs://b/a.json"):
        assert not spark_ingest.read_by_hadoop(uri), uri
    for uri in ("viewfs://t/data/a.json", "hdfs://nn:8020/a.json", "s3a://b/a.json", "abfs://c@a/a.json"):
        assert spark_ingest.read_by_hadoop(uri), uri


def _corpus(top: Path, bundles: Path | None) -> None:
    """A synthetic NDJSON export (plain shards), one shard again gzipped and cut short (a truncation reject
    with its line number, and duplicates), a file with a malformed line, and (``bundles``) the three smallest
    Synthea bundles, one under a name with a space and Hadoop glob characters."""
    generate(SynthConfig(n_patients=20, seed=11, patients_per_file=8), top / "export")
    obs = sorted((top / "export").glob("Observation.*.ndjson"))[0]
    packed = gzip.compress(obs.read_bytes())
    (top / "cut.ndjson.gz").write_bytes(packed[: len(packed) * 2 // 3])
    lines = obs.read_text().splitlines()
    (top / "extra.ndjson").write_text("\n".join([lines[0], '{"resourceType": "Observation", "id": ', "",
                                                 "[1, 2]", lines[1]]) + "\n")
    if bundles is not None:
        small = sorted(bundles.glob("*_*.json.gz"), key=lambda p: (p.stat().st_size, p.name))[:3]
        (top / "bundles").mkdir()
        for p, name in zip(small, ("a b[1].json.gz", "B.json.gz", "c{x}.json.gz"), strict=True):
            shutil.copy(p, top / "bundles" / name)


def _frames(out: Path, rename: tuple[str, str] | None) -> dict[str, pd.DataFrame]:
    """Every event shard, the metadata tables and the rejects of a dataset, rows sorted (the order of rows
    tying on subject, time and code is free); ``rename`` rewrites the ``source_file`` prefix."""
    names = sorted(p.relative_to(out).as_posix() for p in (out / "data").rglob("*.parquet"))
    frames = {n: pd.read_parquet(out / n) for n in names}
    frames.update({m: pd.read_parquet(out / "metadata" / f"{m}.parquet")
                   for m in ("codes", "subject_splits", "subject_ids")})
    rejects = pd.read_parquet(out / "rejects")
    if rename is not None:
        rejects["source_file"] = rejects["source_file"].str.replace(*rename, regex=False)
    frames["rejects"] = rejects
    return {n: f.sort_values(list(f.columns), na_position="first", kind="stable").reset_index(drop=True)
            for n, f in frames.items()}


def _summary(result: dict[str, Any]) -> dict[str, Any]:
    """The summary without what differs by run (timings) or by the inputs' spelling: ``inputs``, and the
    validation sample, which is drawn by a hash of each record's location text (``source_file#index``)."""
    assert result["validation_sample"]["checked"] > 0
    return {k: v for k, v in result.items() if k not in ("seconds", "inputs", "validation_sample")}


def _assert_same(remote: Path, local: Path, rename: tuple[str, str]) -> pd.DataFrame:
    a, b = _frames(remote, rename), _frames(local, None)
    assert list(a) == list(b) and len(a) > 4, "different shard files"
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name], check_dtype=True, obj=name)
    return a["rejects"]


def test_viewfs_inputs_equal_local_paths(spark: Any, viewfs: Any, synthea_bundles: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _corpus(viewfs.local / "in", synthea_bundles)
    scans: list[pa.Table] = []
    real_apply = spark_ingest.apply_scan

    def apply_scan(scan: pa.Table, units: list[dict[str, Any]]) -> Any:
        scans.append(scan)
        return real_apply(scan, units)

    monkeypatch.setattr(spark_ingest, "apply_scan", apply_scan)
    # the local run cuts the plain shards into byte ranges (line numbers across ranges); a Hadoop-read file is
    # always one unit
    monkeypatch.setattr(spark_ingest, "SPLIT_BYTES", 60_000)
    remote = spark_ingest.ingest_fhir(spark, [f"{viewfs.uri}/in"], str(tmp_path / "remote"),
                                      max_time_us=MAX_TIME)
    assert scans == []  # every input read by Hadoop: no scan job opened a file by its path
    local = spark_ingest.ingest_fhir(spark, [str(viewfs.local / "in")], str(tmp_path / "local"),
                                     max_time_us=MAX_TIME)
    (scan,) = scans
    assert scan.num_rows > local["files"] == remote["files"] == 3 + 2 + len(list(
        (viewfs.local / "in" / "export").glob("*.ndjson")))  # byte ranges in the local run

    rename = (viewfs.uri, f"file:{viewfs.local}")
    rejects = _assert_same(tmp_path / "remote", tmp_path / "local", rename)
    assert _summary(remote) == _summary(local)
    assert remote["reconciled"] and remote["events"] > 1000 and remote["totals"]["duplicate"] > 0
    # the rejects name each file and line as the local run does: the truncation record, the malformed lines
    by_file = rejects.groupby("source_file")["record_index"].apply(set).to_dict()
    assert {1, 3} <= by_file[f"file:{viewfs.local}/in/extra.ndjson"]
    (cut,) = rejects[rejects["source_file"] == f"file:{viewfs.local}/in/cut.ndjson.gz"]["reason"]
    assert "truncated gzip" in cut
    raw = pd.read_parquet(tmp_path / "remote" / "rejects")
    assert raw["source_file"].str.startswith(f"{viewfs.uri}/in/").all()


def test_stage_reads_viewfs_inputs(spark: Any, viewfs: Any, tmp_path: Path) -> None:
    """``ehrfm ingest fhir --engine spark --input viewfs://... --input <local file> --meds <local folder>``
    (one job reading both ways) equals the stage on the local paths."""
    from ehrfm.config.ingest import FhirIngestConfig
    from ehrfm.ingest.fhir.stage import run
    from ehrfm.layout import Layout

    _corpus(viewfs.local / "in", None)
    files = [str(viewfs.local / "in" / n) for n in ("extra.ndjson", "cut.ndjson.gz")]
    runs = {}
    for name, inputs in (("remote", [f"{viewfs.uri}/in/export", *files]),
                         ("local", [str(viewfs.local / "in" / "export"), *files])):
        cfg = FhirIngestConfig(input=inputs, engine="spark", max_time="2030-01-01")
        runs[name] = run(cfg, Layout(root=str(tmp_path), meds=str(tmp_path / name)))
    assert runs["remote"].events == runs["local"].events > 1000 and runs["remote"].reconciled
    rename = (viewfs.uri, f"file:{viewfs.local}")
    _assert_same(tmp_path / "remote", tmp_path / "local", rename)
    summaries = [json.loads((tmp_path / n / "summary.json").read_text()) for n in ("remote", "local")]
    assert _summary(summaries[0]) == _summary(summaries[1])


def test_hidden_names_refused(spark: Any, viewfs: Any, tmp_path: Path) -> None:
    """Spark's file reader skips a file named ``_x`` or ``.x`` even when named explicitly: an error, not a
    silently smaller dataset."""
    (viewfs.local / "_part.ndjson").write_text('{"resourceType": "Patient", "id": "p"}\n')
    with pytest.raises(ConfigError, match="_part.ndjson"):
        spark_ingest.ingest_fhir(spark, [f"{viewfs.uri}/_part.ndjson"], str(tmp_path / "out"),
                                 max_time_us=MAX_TIME)
