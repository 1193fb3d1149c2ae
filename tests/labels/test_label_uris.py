"""``ehrfm label`` on Hadoop-compatible URIs (issue 17, "truly distributed"): the local engine reads and
writes ``s3://`` (an in-process S3 server), the Spark engines ``viewfs://`` (a scheme only Hadoop's
FileSystem in Spark's JVM serves, so no driver-local path can be involved); both give exactly the tables of
a run on local folders, and a URI never turns into a local folder named after its scheme."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm import storage
from ehrfm.atomic import PartialOutputError
from ehrfm.config.label import LabelConfig
from ehrfm.config.spark import SparkConfig
from ehrfm.labels import tables
from ehrfm.labels.stage import run
from ehrfm.labels.tables import label_tasks, read_kinds, read_labels
from ehrfm.layout import Layout
from ehrfm.schema import LABELS_SCHEMA

from .timelines import random_population, write_meds

# one task of each kind: binary, time-to-event (a sidecar), forecast (a sidecar)
TASKS = ["readmission_30d", "death_1y_tte", "next_visit_codes"]


def _upload(local: Path, uri: str) -> None:
    """Copy the folder ``local`` to ``uri`` file by file (through ehrfm.storage, as any client would)."""
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.write_bytes(storage.join(uri, f.relative_to(local).as_posix()), f.read_bytes())


def _no_scheme_folders(*roots: Path) -> None:
    """Nothing named like a URI scheme (``s3:``, ``viewfs:``; what ``Path("s3://b/x")`` would create)."""
    for root in roots:
        bad = [p for p in root.rglob("*") if p.name.endswith(":") or ":" in p.name]
        assert not bad, bad


def _assert_same_labels(got_dir: str, want_dir: str) -> None:
    """The same tasks, kinds and label rows (the in-memory form, every column)."""
    assert label_tasks(got_dir) == label_tasks(want_dir) == sorted(TASKS)
    assert read_kinds(got_dir) == read_kinds(want_dir)
    for task in TASKS:
        got = read_labels(storage.join(got_dir, f"{task}.parquet"))
        want = read_labels(storage.join(want_dir, f"{task}.parquet"))
        assert got.num_rows > 0, task
        assert got.equals(want), task


def test_local_engine_reads_and_writes_s3(s3, tmp_path: Path,  # type: ignore[no-untyped-def]
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_meds(random_population(30, seed=2), tmp_path / "meds")
    meds_uri, labels_uri = f"{s3.uri}/x/meds", f"{s3.uri}/x/labels"
    _upload(tmp_path / "meds", meds_uri)
    cfg = LabelConfig(tasks=TASKS, engine="local")
    want = run(cfg, Layout(meds=str(tmp_path / "meds"), labels=str(tmp_path / "labels")))
    got = run(cfg, Layout(meds=meds_uri, labels=labels_uri))
    assert got.rows == want.rows and got.tasks == want.tasks
    _assert_same_labels(labels_uri, str(tmp_path / "labels"))
    # the local engine writes the same bytes to S3 as to a local folder: one file per table and sidecar
    for name in storage.list_names(labels_uri):
        if name.endswith(".parquet"):
            local = (tmp_path / "labels" / name).read_bytes()
            assert storage.read_bytes(storage.join(labels_uri, name)) == local, name
    assert json.loads(storage.read_text(f"{labels_uri}/summary.json")) == want.rows
    _no_scheme_folders(tmp_path)


def test_a_uri_output_without_its_marker_is_refused_and_binary_now_drops_the_sidecar(  # type: ignore[no-untyped-def]
        s3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_meds(random_population(10, seed=4), tmp_path / "meds")
    layout = Layout(meds=f"{s3.uri}/meds", labels=f"{s3.uri}/labels")
    _upload(tmp_path / "meds", layout.meds_uri)
    run(LabelConfig(tasks=["death_1y_tte"], engine="local"), layout)
    assert storage.is_file(f"{layout.labels_uri}/death_1y_tte.extra.parquet")
    storage.delete(f"{layout.labels_uri}/summary.json")  # an interrupted in-place write
    with pytest.raises(PartialOutputError, match="summary.json"):
        run(LabelConfig(tasks=["death_1y_tte"], engine="local"), layout)
    # a task spec of the same name that is binary now: its old sidecar goes (through storage, not a Path)
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "death_1y_tte.yaml").write_text(
        "name: death_1y_tte\nkind: binary\nindex: {codes: 'ENCOUNTER//INPATIENT//END'}\n"
        "prediction_time: 0h\noutcome: {codes: MEDS_DEATH, within: 365d}\n")
    run(LabelConfig(tasks=["death_1y_tte"], tasks_dir=str(tasks_dir), engine="local", overwrite=True), layout)
    assert not storage.exists(f"{layout.labels_uri}/death_1y_tte.extra.parquet")
    assert read_kinds(layout.labels_uri) == {"death_1y_tte": "binary"}
    assert storage.is_file(f"{layout.labels_uri}/summary.json")
    _no_scheme_folders(tmp_path)


@pytest.mark.spark
@pytest.mark.parametrize("engine", ["spark", "reference"])
def test_spark_engines_read_and_write_viewfs(spark, viewfs, tmp_path: Path,  # type: ignore[no-untyped-def]
                                             monkeypatch: pytest.MonkeyPatch, engine: str) -> None:
    monkeypatch.chdir(tmp_path)
    write_meds(random_population(30, seed=2), tmp_path / "meds")
    write_meds(random_population(30, seed=2), viewfs.local / "meds")  # the bytes behind viewfs://.../meds
    cfg = LabelConfig(tasks=TASKS, engine=engine,  # type: ignore[arg-type]
                      spark=SparkConfig(master=spark.sparkContext.master))
    local = run(LabelConfig(tasks=TASKS, engine="local"),
                Layout(meds=str(tmp_path / "meds"), labels=str(tmp_path / "local")))
    got = run(cfg, Layout(meds=f"{viewfs.uri}/meds", labels=f"{viewfs.uri}/labels"))
    # the same summary (a Spark aggregate here) and, row for row, the tables of the local engine
    pd.testing.assert_frame_equal(pd.DataFrame(got.rows), pd.DataFrame(local.rows))
    _assert_same_labels(f"{viewfs.uri}/labels", str(tmp_path / "local"))
    # written by the executors as folders of parts (no label row on the driver), markers through Hadoop
    out = viewfs.local / "labels"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith((".", "_"))) == sorted(
        [*(f"{t}.parquet" for t in TASKS), "death_1y_tte.extra.parquet", "next_visit_codes.extra.parquet",
         "summary.json", "tasks.json"])
    for task in TASKS:
        assert (out / f"{task}.parquet").is_dir() and list((out / f"{task}.parquet").glob("part-*.parquet"))
        assert pq.read_table(out / f"{task}.parquet").num_rows == read_labels(
            tmp_path / "local" / f"{task}.parquet").num_rows
    assert json.loads((out / "summary.json").read_text()) == got.rows
    _no_scheme_folders(tmp_path, viewfs.local)
    # what tokenize reads: the tables ehrfm wrote (folders of parts on viewfs, single files locally) are read
    # by Spark itself, none through the driver, and equal the Arrow reader's
    want = _by_key(tables.tasks_table(str(tmp_path / "local"), TASKS))

    def no_driver_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("label rows read on the driver")

    monkeypatch.setattr(tables, "read_tasks", no_driver_read)
    for where in (f"{viewfs.uri}/labels", str(tmp_path / "local")):
        frame = tables.tasks_spark(spark, where, TASKS)
        assert frame is not None and frame.columns == [*LABELS_SCHEMA.names, tables.TASK]
        assert _by_key(frame.toArrow().cast(want.schema)).equals(want), where


def _by_key(table: pa.Table) -> pa.Table:
    return table.sort_by([(tables.TASK, "ascending"), ("subject_id", "ascending"),
                          ("prediction_time", "ascending")])


@pytest.mark.spark
def test_spark_reader_refuses_a_sidecar_of_another_run(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    write_meds(random_population(10, seed=4), tmp_path / "meds")
    layout = Layout(meds=str(tmp_path / "meds"), labels=str(tmp_path / "labels"))
    run(LabelConfig(tasks=["death_1y_tte"], engine="local"), layout)
    sidecar = layout.label_extras("death_1y_tte")
    table = pq.read_table(sidecar)
    pq.write_table(table.slice(1), sidecar)  # one key fewer than the label file
    with pytest.raises(ValueError, match=r"death_1y_tte.*different keys \(1 only in the label file"):
        tables.tasks_spark(spark, layout.labels_uri, ["death_1y_tte"])
