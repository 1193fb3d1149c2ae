"""The Spark MEDS writer on a filesystem only Hadoop serves (``viewfs://``, the ``viewfs`` fixture): the
same files as on a local folder (byte for byte) and as the local engine; the driver receives nothing per
subject; ``ehrfm ingest mimic --engine spark`` with input and output on viewfs.

Not covered here: FHIR inputs on viewfs (the Spark FHIR engine's executors read the files with pyarrow, so
an input URI must be one pyarrow serves; its output goes through this writer like every other stage's).
"""

from __future__ import annotations

import datetime as dt
import random
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm.ingest.local_writer import write_meds_local
from ehrfm.schema import DATA_SCHEMA, SPLITS

pytestmark = pytest.mark.spark

RATIOS = (0.5, 0.25, 0.25)


def _events(n_subjects: int, seed: int = 0) -> pa.Table:
    """Events of ``n_subjects`` subjects in scrambled order: static rows, ties on time, a death with a later
    event, several sources and codes."""
    rng = random.Random(seed)
    rows: list[tuple[Any, ...]] = []
    for sid in rng.sample(range(1, 10 * n_subjects), n_subjects):
        rows.append((sid, None, "GENDER//F", None, None, "patients"))
        for day in rng.sample(range(1, 28), 3):
            t = dt.datetime(2020, 1, day, 8)
            rows.append((sid, t, f"LAB//{rng.choice('ABC')}", float(day), None, "labs"))
            rows.append((sid, t, "NOTE//X", None, "x" * rng.randrange(0, 30), "notes"))
        if sid % 5 == 0:
            rows.append((sid, dt.datetime(2020, 1, 2), "MEDS_DEATH", None, None, "patients"))
    rng.shuffle(rows)
    cols = list(zip(*rows, strict=True))
    types = [pa.int64(), pa.timestamp("us"), pa.string(), pa.float64(), pa.string(), pa.string()]
    names = ["subject_id", "time", "code", "numeric_value", "text_value", "source"]
    return pa.table({n: pa.array(c, t) for n, c, t in zip(names, cols, types, strict=True)})


def _files(root: Path) -> dict[str, bytes]:
    """The parquet files of a MEDS root that hold data or per-subject metadata, by relative path."""
    names = sorted(p.relative_to(root).as_posix() for p in (root / "data").rglob("*.parquet"))
    names += ["metadata/subject_splits.parquet", "metadata/subject_ids.parquet", "metadata/codes.parquet"]
    return {n: (root / n).read_bytes() for n in names}


def _visible(root: Path, sub: str) -> list[str]:
    """Files under ``root/sub`` that a reader sees (no hidden or ``_``-prefixed part in the path)."""
    return sorted(p.relative_to(root / sub).as_posix() for p in (root / sub).rglob("*")
                  if p.is_file() and not any(x.startswith((".", "_")) for x in p.relative_to(root).parts))


def test_viewfs_output_is_the_local_folder_output(spark, viewfs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same events written by the Spark writer to a viewfs:// folder, to a local folder, and by the local
    engine: identical files (bytes) under data/ and metadata/, the same rejects, summaries and nothing left
    over from the tasks' hidden folders."""
    from ehrfm.ingest.writer import write_meds_dataset

    events = _events(40)
    rejects = pa.table({"source_file": ["f.csv", "g.csv"], "record_index": [3, 7],
                        "resource_type": ["t", "u"], "resource_id": ["x1", None], "field": ["time", None],
                        "reason": ["bad time", "no code"]})
    ids = pa.table({"subject_id": sorted(set(events["subject_id"].to_pylist())),
                    "source_id": [f"p{i}" for i in sorted(set(events["subject_id"].to_pylist()))]})
    args: dict[str, Any] = dict(dataset_name="d", etl_name="t", split_ratios=RATIOS, rows_per_shard=40,
                                dataset_version="1")

    def spark_write(out: str) -> dict[str, Any]:
        return write_meds_dataset(spark, spark.createDataFrame(events.to_pandas()), out,
                                  rejects=spark.createDataFrame(rejects.to_pandas()).repartition(2),
                                  subject_ids=spark.createDataFrame(ids.to_pandas()), **args)

    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    # a cluster that compresses job output by default must not compress the writer's files
    hadoop.set("mapreduce.output.fileoutputformat.compress", "true")
    hadoop.set("mapreduce.output.fileoutputformat.compress.codec", "org.apache.hadoop.io.compress.GzipCodec")
    try:
        remote = spark_write(f"{viewfs.uri}/meds")
    finally:
        hadoop.unset("mapreduce.output.fileoutputformat.compress")
        hadoop.unset("mapreduce.output.fileoutputformat.compress.codec")
    local = spark_write(str(tmp_path / "spark"))
    engine = write_meds_local(events, str(tmp_path / "local"), rejects=rejects, subject_ids=ids, **args)
    on_viewfs = viewfs.local / "meds"
    assert len(local["shards"]) > len(SPLITS)  # several shards per split
    assert {k: v for k, v in remote.items() if k != "spark_master"} == \
        {k: v for k, v in engine.items() if k != "engine"}
    assert local == remote
    a, b, c = _files(on_viewfs), _files(tmp_path / "spark"), _files(tmp_path / "local")
    assert list(a) == list(b) == list(c)
    assert a == b == c  # byte for byte: the tasks' pyarrow bytes, written by Spark's writer
    for name in a:
        if name.startswith("data/"):
            assert pq.read_schema(on_viewfs / name).equals(DATA_SCHEMA, check_metadata=False), name
    for root in (on_viewfs, tmp_path / "spark"):
        assert _visible(root, "data") == [n.removeprefix("data/") for n in a if n.startswith("data/")]
        assert not [p for p in (root / "data").iterdir() if p.name.startswith("_")]  # hidden folder gone
        assert not [p for p in (root / "metadata").iterdir() if p.name.startswith("_")]
        got = pq.read_table(root / "rejects").sort_by("record_index")
        assert got.to_pylist() == rejects.to_pylist()


def test_the_driver_gets_nothing_per_subject(spark, viewfs, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Every row the driver collects (collect / toArrow / toPandas) and the shard statistics it reads are
    per split, shard, code or source: with 600 subjects and 6 codes, far fewer rows than subjects."""
    import ehrfm.ingest.writer as writer

    n_subjects = 600
    events = _events(n_subjects, seed=1)
    df = spark.createDataFrame(events.to_pandas())
    frame_cls = type(df)  # Spark 4: the classic implementation of pyspark.sql.DataFrame
    collected: list[tuple[str, int]] = []
    for method in ("collect", "toArrow", "toPandas"):
        original = getattr(frame_cls, method)

        def spy(self: Any, *a: Any, _original: Any = original, _name: str = method, **k: Any) -> Any:
            out = _original(self, *a, **k)
            collected.append((_name, out.num_rows if hasattr(out, "num_rows") else len(out)))
            return out

        monkeypatch.setattr(frame_cls, method, spy)
    stats_rows: list[int] = []
    write_shards = writer._write_shards

    def counting(*a: Any, **k: Any) -> Any:
        out = write_shards(*a, **k)
        stats_rows.append(out[0].num_rows)
        return out

    monkeypatch.setattr(writer, "_write_shards", counting)
    summary = writer.write_meds_dataset(spark, df, f"{viewfs.uri}/meds", dataset_name="d", etl_name="t",
                                        split_ratios=RATIOS, rows_per_shard=500)
    assert summary["subjects"] == n_subjects and summary["events"] == events.num_rows
    assert collected, "the spy saw no collect"
    n_shards, n_codes, n_sources = len(summary["shards"]), summary["codes"], 3
    # a shard's stats: one file row, one row per code, one per source with events after death
    assert stats_rows and stats_rows[0] <= n_shards * (1 + n_codes + n_sources)
    biggest = max(n for _, n in collected)
    assert biggest <= max(n_shards * 64, n_codes), collected  # _partition_keys: <= one row per partition
    assert biggest < n_subjects // 4, collected
    ids = pq.read_table(viewfs.local / "meds" / "metadata" / "subject_ids.parquet")
    assert ids.num_rows == n_subjects and ids["source_id"].to_pylist() == [str(i) for i in ids["subject_id"]]


def test_mimic_spark_stage_reads_and_writes_viewfs(spark, viewfs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``ehrfm ingest mimic --engine spark`` on a 5-subject MIMIC-IV root: CSV inputs read from viewfs://
    and the dataset written to viewfs:// equal the run on local folders, file by file."""
    from ehrfm.config.ingest import MimicIngestConfig
    from ehrfm.ingest.mimic.stage import run
    from ehrfm.layout import Layout
    from tests.ingest.test_mimic_local import _tiny_root

    root = _tiny_root(tmp_path / "in")
    shutil.copytree(root.parent.parent, viewfs.local / "in")
    rel = root.relative_to(tmp_path / "in").as_posix()  # mimiciv/3.1: the folder names the release
    runs = {}
    for name, src, meds in [("local", str(root), str(tmp_path / "out")),
                            ("viewfs", f"{viewfs.uri}/in/{rel}", f"{viewfs.uri}/out")]:
        cfg = MimicIngestConfig(input=src, engine="spark", rows_per_shard=5)
        runs[name] = run(cfg, Layout(root=str(tmp_path / name), meds=meds))
    assert runs["viewfs"].events == runs["local"].events > 0
    assert runs["viewfs"].rejects == runs["local"].rejects
    assert runs["viewfs"].output == f"{viewfs.uri}/out"
    out_l, out_v = tmp_path / "out", viewfs.local / "out"
    assert (out_v / "summary.json").is_file()
    names = _visible(out_l, "data")
    assert names and _visible(out_v, "data") == names
    for n in [f"data/{n}" for n in names] + ["metadata/codes.parquet", "metadata/subject_splits.parquet",
                                             "metadata/subject_ids.parquet"]:
        assert pq.read_table(out_v / n).equals(pq.read_table(out_l / n)), n
    assert pq.read_table(out_v / "rejects").num_rows == runs["local"].rejects > 0


def test_fhir_spark_stage_writes_viewfs(spark, viewfs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``ehrfm ingest fhir --engine spark`` (inputs on this machine: see the module docstring) with its
    output on viewfs:// — the stage's own temporary folder, the shards, metadata and the dataset version
    stamped afterwards — equals the run into a local folder, file by file."""
    import json

    from ehrfm.config.ingest import FhirIngestConfig
    from ehrfm.config.synth import SynthConfig
    from ehrfm.ingest.fhir.stage import run
    from ehrfm.layout import Layout
    from ehrfm.synth.stage import run as synth

    synth(SynthConfig(n_patients=12, seed=5, patients_per_file=6, progress=False), Layout(root=str(tmp_path)))
    cfg = FhirIngestConfig(input=[str(tmp_path / "synthetic")], engine="spark", max_time="2030-01-01",
                           dataset_version="v7", rows_per_shard=400)
    local = run(cfg, Layout(root=str(tmp_path), meds=str(tmp_path / "out")))
    remote = run(cfg, Layout(root=str(tmp_path), meds=f"{viewfs.uri}/out"))
    assert remote.events == local.events > 0 and remote.subjects == local.subjects == 12
    out_l, out_v = tmp_path / "out", viewfs.local / "out"
    names = _visible(out_l, "data")
    assert len(names) > 1 and _visible(out_v, "data") == names
    # no _fhir_tmp left (Hadoop's local filesystem behind viewfs adds hidden .crc files: not compared)
    assert sorted(p.name for p in out_v.iterdir() if not p.name.startswith(".")) == \
        sorted(p.name for p in out_l.iterdir())
    for n in [f"data/{n}" for n in names] + ["metadata/codes.parquet", "metadata/subject_splits.parquet",
                                             "metadata/subject_ids.parquet"]:
        assert pq.read_table(out_v / n).equals(pq.read_table(out_l / n)), n
    assert json.loads((out_v / "metadata" / "dataset.json").read_text())["dataset_version"] == "v7"
