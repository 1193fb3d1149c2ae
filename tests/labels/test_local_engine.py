"""The single-machine engine (``--engine local``, polars) equals the per-subject reference
(``label_subject_rows``) row for row, every column: on random timelines drawn by hypothesis for every shipped
task and the rest of the task language (both code conventions), on hand-made ties, on a written dataset in
both shard layouts (tables and summary), on the MIMIC-IV demo and on Synthea; ``auto`` picks it unless the
Spark master names a cluster; and it never imports Spark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings

from ehrfm.cli import main
from ehrfm.labels import label_events, load_tasks, parse_spec
from ehrfm.labels.dataset import label_dataset, resolve_engine
from ehrfm.labels.direct import read_labels, read_meds_events, read_splits, summarize
from ehrfm.labels.local_engine import events_frame, label_tables
from ehrfm.labels.spec import TaskSpec
from ehrfm.layout import Layout, MedsPaths

from .test_spark_engine import ENGINE_COLS, SPECS, populations
from .test_synthea_crosscheck import subset  # noqa: F401  (a fixture: the bundles the cross-check ingests)
from .timelines import BIRTH_ROW, D, after_death_subject, as_meds_etl, ev, random_population, stay, write_meds

REPO = Path(__file__).resolve().parents[2]


def local_labels(events: pd.DataFrame, specs: list[TaskSpec]) -> dict[str, pa.Table]:
    """The local engine over an in-memory population."""
    frame = events_frame(pa.Table.from_pandas(events[ENGINE_COLS], preserve_index=False))
    return label_tables(frame, specs)


def assert_same(events: pd.DataFrame, specs: list[TaskSpec] = SPECS) -> dict[str, pa.Table]:
    """Both engines on ``events``: identical tables for every spec; returns the reference's."""
    ref = label_events(events, specs)
    got = local_labels(events, specs)
    for s in specs:
        assert got[s.name].schema == ref[s.name].schema, s.name
        assert got[s.name].equals(ref[s.name]), (s.name, got[s.name].to_pandas(), ref[s.name].to_pandas())
    return ref


# --- random and hand-made timelines -------------------------------------------------------------------------
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(events=populations())
def test_engines_agree_on_random_timelines(events: pd.DataFrame) -> None:
    assert_same(events)
    assert_same(as_meds_etl(events))  # every aliased boundary in the MEDS MIMIC-IV ETL's codes


def test_ties_resolve_by_code_then_encounter_id_whatever_the_row_order() -> None:
    # two stays end at one instant; a later START carries "x": an outcome for index "y" only (other_encounter)
    rows = [BIRTH_ROW, *stay("y", 24, 48), *stay("x", 0, 48),
            (48 + 5 * D, "ENCOUNTER//INPATIENT//START", "x"), (48 + 40 * D, "LAB//L0", None)]
    specs = load_tasks("readmission_30d")
    forward = assert_same(ev(1, rows), specs)
    backward = assert_same(ev(1, rows[::-1]), specs)
    assert forward["readmission_30d"].equals(backward["readmission_30d"])
    assert forward["readmission_30d"].column("boolean_value").to_pylist() == [False]


def test_subjects_without_events_the_tasks_read_untimed_events_and_no_rows() -> None:
    events = pd.concat([ev(1, [BIRTH_ROW, (None, "GENDER//F", None), (5.0, "LAB//L0", None)]),
                        ev(2, [(None, "ENCOUNTER//INPATIENT//END", "a")]),
                        ev(3, [BIRTH_ROW, *stay("a", 0, 30 * D), (None, "MEDS_DEATH", "a"),
                               (90 * D, "LAB//L0", None)])],
                       ignore_index=True)
    ref = assert_same(events)
    assert ref["readmission_30d"].column("subject_id").to_pylist() == [3]  # the untimed death is never read
    never = parse_spec({"name": "never", "kind": "forecast", "index": {"codes": "NO//SUCH"},
                        "prediction_time": "0h", "outcome": {"at": "next_encounter", "codes": "DIAGNOSIS//*",
                                                             "next_encounter": "ENCOUNTER//*"}})
    assert assert_same(events, [never])["never"].num_rows == 0


def test_pairs_made_in_batches_of_subjects_give_the_same_tables(monkeypatch: pytest.MonkeyPatch) -> None:
    import ehrfm.labels.local_engine as local_engine

    events = pd.concat([random_population(40, seed=7), after_death_subject(9999)], ignore_index=True)
    specs = SPECS
    whole = local_labels(events, specs)
    monkeypatch.setattr(local_engine, "MAX_PAIRS", 7)  # a few subjects per batch, a large one alone
    assert_same(events, specs)
    for s in specs:
        assert local_labels(events, specs)[s.name].equals(whole[s.name]), s.name


def test_events_without_an_encounter_id_column() -> None:
    events = random_population(8, seed=5)
    specs = load_tasks("all")
    got = label_tables(events_frame(pa.Table.from_pandas(events[["subject_id", "time", "code"]],
                                                         preserve_index=False)), specs)
    ref = label_events(events.assign(encounter_id=None), specs)
    for s in specs:
        assert got[s.name].equals(ref[s.name]), s.name


# --- written datasets ---------------------------------------------------------------------------------------
def _split_layout(root: Path) -> None:
    """Move ``data/part-<i>.parquet`` to ``data/<split>/<i>.parquet`` (the layout ehrfm ingest writes)."""
    data = MedsPaths(root).data
    for i, part in enumerate(sorted(data.glob("part-*.parquet"))):
        (data / ("train", "held_out")[i % 2]).mkdir(exist_ok=True)
        part.rename(data / ("train", "held_out")[i % 2] / f"{i}.parquet")


@pytest.mark.parametrize("layout", ["flat", "split"])
@pytest.mark.parametrize("convention", ["ehrfm", "meds_etl"])
def test_label_dataset_writes_the_reference_tables_and_summary(tmp_path: Path, layout: str,
                                                               convention: str) -> None:
    events = pd.concat([random_population(60, seed=3), after_death_subject(9999)], ignore_index=True)
    specs = load_tasks("all")
    direct = label_events(events, specs)  # always on our codes: the ETL codes must give the same tables
    write_meds(as_meds_etl(events) if convention == "meds_etl" else events, tmp_path / "meds", n_files=3)
    if layout == "split":
        _split_layout(tmp_path / "meds")
    summary = label_dataset(None, tmp_path / "meds", specs, tmp_path / "labels", engine="local")
    for spec in specs:
        got = read_labels(tmp_path / "labels" / f"{spec.name}.parquet")
        assert got.num_rows > 0, spec.name
        assert got.equals(direct[spec.name]), spec.name
    expected = summarize(direct, {s.name: s.kind for s in specs}, read_splits(tmp_path / "meds"))
    pd.testing.assert_frame_equal(summary, expected)


def test_event_files_of_different_types_read_together(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    events = random_population(12, seed=6)
    first, second = events[events["subject_id"] < 1006], events[events["subject_id"] >= 1006]
    data = MedsPaths(tmp_path / "meds").data
    data.mkdir(parents=True)
    cols = ["subject_id", "time", "code", "encounter_id"]
    pq.write_table(pa.Table.from_pandas(first[cols], preserve_index=False), data / "0.parquet")
    # another writer: nanosecond times, UTC-aware, and no encounter_id column
    later = pa.Table.from_pandas(second[["subject_id", "time", "code"]], preserve_index=False)
    later = later.set_column(1, "time", later.column("time").cast(pa.timestamp("ns", tz="UTC")))
    pq.write_table(later, data / "1.parquet")
    specs = load_tasks("all")
    ref = label_events(pd.concat([first, second.assign(encounter_id=None)], ignore_index=True), specs)
    label_dataset(None, tmp_path / "meds", specs, tmp_path / "labels", engine="local")
    for s in specs:
        assert read_labels(tmp_path / "labels" / f"{s.name}.parquet").equals(ref[s.name]), s.name
    assert ref["readmission_30d"].num_rows > 0


def test_a_task_without_rows_writes_an_empty_table_and_summary_row(tmp_path: Path) -> None:
    write_meds(random_population(5, seed=1), tmp_path / "meds")
    never = parse_spec({"name": "never", "kind": "binary", "index": {"codes": "NO//SUCH//CODE"},
                        "prediction_time": "0h", "outcome": {"codes": "MEDS_DEATH", "within": "1d"}})
    with pytest.warns(UserWarning, match="matches no code"):
        summary = label_dataset(None, tmp_path / "meds", [never], tmp_path / "labels", engine="local")
    assert read_labels(tmp_path / "labels" / "never.parquet").num_rows == 0
    assert summary[["task", "split", "rows", "subjects", "positives"]].values.tolist() == [
        ["never", "all", 0, 0, 0]]


# --- engine choice and the CLI ------------------------------------------------------------------------------
def test_auto_is_local_unless_the_master_names_a_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EHRFM_SPARK_MASTER", raising=False)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    for master in (None, "local", "local[*]", "local[2]"):
        assert resolve_engine("auto", master) == "local", master
    for master in ("spark://10.0.0.1:7077", "yarn", "k8s://https://host:443", "mesos://host:5050"):
        assert resolve_engine("auto", master) == "spark", master
    for engine in ("spark", "reference", "local"):  # an explicit engine is never overridden
        assert resolve_engine(engine, "yarn") == engine
    monkeypatch.setenv("EHRFM_SPARK_MASTER", "spark://h:7077")  # the sessions' default master
    assert resolve_engine("auto", None) == "spark" and resolve_engine("auto", "local[2]") == "local"
    monkeypatch.delenv("EHRFM_SPARK_MASTER")
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "1")  # launched by spark-submit: its master decides
    assert resolve_engine("auto", None) == "spark"
    with pytest.raises(ValueError, match="engine: must be one of .*got 'duckdb'"):
        resolve_engine("duckdb", None)


def _cli_in_subprocess(meds: Path, labels: Path, engine: str) -> tuple[int, list[str]]:
    """``ehrfm label`` in a fresh interpreter: (exit code, the heavy modules it imported: Spark and its JVM
    bridge, torch, Lightning, MLflow)."""
    argv = ["label", "--meds", str(meds), "--labels", str(labels), "--engine", engine]
    heavy = ("pyspark", "py4j", "torch", "lightning", "mlflow")
    code = (f"import sys; from ehrfm.cli import main; rc = main({argv!r}); "
            f"print('HEAVY', [m for m in {heavy!r} if m in sys.modules])")
    env = {k: v for k, v in os.environ.items() if k not in ("PYSPARK_GATEWAY_PORT", "EHRFM_SPARK_MASTER")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("HEAVY "))
    return out.returncode, json.loads(line[len("HEAVY "):].replace("'", '"'))


@pytest.mark.parametrize("engine", ["local", "auto"])
def test_cli_local_and_auto_write_the_reference_tables_without_spark(tmp_path: Path, engine: str) -> None:
    events = random_population(30, seed=2)
    write_meds(events, tmp_path / "meds")
    _split_layout(tmp_path / "meds")
    rc, heavy = _cli_in_subprocess(tmp_path / "meds", tmp_path / "labels", engine)
    assert rc == 0 and heavy == []  # no pyspark import, so no SparkContext and no JVM; no torch either
    layout = Layout(labels=str(tmp_path / "labels"))
    specs = load_tasks("all")
    direct = label_events(events, specs)
    assert json.loads(layout.label_kinds.read_text()) == {s.name: s.kind for s in specs}
    for s in specs:
        assert read_labels(layout.label_table(s.name)).equals(direct[s.name]), s.name
    saved = pd.DataFrame(json.loads(layout.label_summary.read_text()))
    expected = summarize(direct, {s.name: s.kind for s in specs}, read_splits(tmp_path / "meds"))
    assert saved[["task", "split", "rows", "subjects", "positives"]].values.tolist() == \
        expected[["task", "split", "rows", "subjects", "positives"]].values.tolist()


def test_cli_engine_local_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_meds(random_population(10, seed=4), tmp_path / "meds")
    # the input as a file: URI (every stage takes one; the local engine reads it with polars)
    argv = ["label", "--meds", (tmp_path / "meds").as_uri(), "--labels", str(tmp_path / "l"),
            "--engine", "local", "--tasks", "[readmission_30d,death_1y_tte]"]
    assert main(argv) == 0
    assert "readmission_30d" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "l").iterdir()) == [
        "death_1y_tte.extra.parquet", "death_1y_tte.parquet", "readmission_30d.parquet", "summary.json",
        "tasks.json"]


# --- real data ----------------------------------------------------------------------------------------------
@pytest.mark.spark
def test_mimic_demo_equals_the_reference(mimic_demo_ingested: tuple[Path, dict[str, Any], pd.DataFrame],
                                         tmp_path: Path) -> None:
    meds, _, _ = mimic_demo_ingested  # the whole demo, MEDS MIMIC-IV ETL codes, split layout
    specs = load_tasks("all")
    summary = label_dataset(None, meds, specs, tmp_path / "labels", engine="local")
    ref = label_events(read_meds_events(meds), specs)
    for s in specs:
        got = read_labels(tmp_path / "labels" / f"{s.name}.parquet")
        assert got.num_rows > 0 and got.equals(ref[s.name]), s.name
    pd.testing.assert_frame_equal(summary, summarize(ref, {s.name: s.kind for s in specs}, read_splits(meds)))


@pytest.mark.spark
@pytest.mark.slow
def test_synthea_equals_the_reference(spark: object, subset: list[Path],  # noqa: F811
                                      tmp_path: Path) -> None:
    from ehrfm.ingest.fhir.spark_ingest import ingest_fhir

    ingest_fhir(spark, [str(f) for f in subset], str(tmp_path / "meds"), validate="none")  # type: ignore[arg-type]
    specs = load_tasks("all")
    label_dataset(None, tmp_path / "meds", specs, tmp_path / "labels", engine="local")
    ref = label_events(read_meds_events(tmp_path / "meds"), specs)
    for s in specs:
        got = read_labels(tmp_path / "labels" / f"{s.name}.parquet")
        assert got.equals(ref[s.name]), s.name
    assert ref["readmission_30d"].num_rows > 0
