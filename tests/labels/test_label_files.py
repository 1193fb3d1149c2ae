"""Label tables on disk (ehrfm.labels.tables): one MEDS label file per task, valid under ``meds.LabelSchema``,
with the time-to-event / forecast columns in a sidecar; the one reader every stage uses reads those, folders
of parts of older versions, and label files written by ACES (a binary task with no ehrfm spec), which
``ehrfm prepare`` / ``tokenize`` / ``finetune`` / ``evaluate`` then run on."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from meds.schema import LabelSchema

from ehrfm.evaluate.data import load_labels, task_kind
from ehrfm.labels import label_events, load_tasks
from ehrfm.labels.tables import (
    TASK,
    read_kinds,
    read_labels,
    read_task_labels,
    split_labels,
    tasks_frame,
    tasks_spark,
    tasks_table,
    write_labels,
)
from ehrfm.layout import Layout
from ehrfm.schema import (
    LABEL_EXTRAS,
    LABEL_KEY,
    LABELS_SCHEMA,
    MEDS_LABEL_SCHEMA,
    MEDS_LABEL_VALUES,
    PREDICTION_TIME,
    SUBJECT_ID,
)
from ehrfm.tokenize.direct import read_label_tables

from .timelines import random_population, write_meds

KINDS = {s.name: s.kind for s in load_tasks("all")}


@pytest.fixture(scope="module")
def engine_labels() -> dict[str, pa.Table]:
    """Every shipped task's labels (the reference engine) on a random population: every kind, with rows."""
    tables = label_events(random_population(80, seed=5), load_tasks("all"))
    assert set(KINDS.values()) == {"binary", "time_to_event", "forecast"}
    assert all(t.num_rows for t in tables.values())
    return tables


def test_meds_label_schema_is_the_meds_packages() -> None:
    meds = LabelSchema.schema()
    assert MEDS_LABEL_SCHEMA.names == meds.names
    assert [f.type for f in MEDS_LABEL_SCHEMA] == [f.type for f in meds]
    for kind, values in MEDS_LABEL_VALUES.items():  # every kind fills at least one value column
        assert values and set(values) <= set(meds.names) - set(LABEL_KEY), kind
    # the in-memory table holds every column once: the MEDS ones, then the sidecar's
    extras = [c for cols in LABEL_EXTRAS.values() for c in cols]
    assert LABELS_SCHEMA.names == [*meds.names, *dict.fromkeys(extras)]


@pytest.mark.parametrize("task", sorted(KINDS))
def test_written_files_are_valid_meds_labels_and_read_back_exactly(
        engine_labels: dict[str, pa.Table], tmp_path: Path, task: str) -> None:
    kind, table = KINDS[task], engine_labels[task]
    shuffled = table.take(np.random.default_rng(0).permutation(table.num_rows))
    written = write_labels(shuffled, kind, tmp_path, task)
    layout = Layout(labels=str(tmp_path))
    path, sidecar = layout.label_table(task), layout.label_extras(task)
    assert path.is_file() and Path(written[0]) == path  # one file, not a Spark folder of parts
    meds = pq.read_table(path)
    LabelSchema.validate(meds)  # raises on a wrong type, an extra column or a null value
    assert meds.schema.names == [*LABEL_KEY, *MEDS_LABEL_VALUES[kind]]
    keys = meds.select(list(LABEL_KEY)).to_pandas()
    assert keys.equals(keys.sort_values(list(LABEL_KEY), ignore_index=True))  # sorted on disk
    assert not keys.duplicated().any()
    assert sidecar.exists() == bool(LABEL_EXTRAS[kind])
    ref = table.to_pandas()
    if kind == "binary":
        assert meds.column("boolean_value").to_pylist() == ref["boolean_value"].tolist()
    else:  # the sidecar: same keys, same order, the kind's columns in full precision
        extra = pq.read_table(sidecar)
        assert extra.schema.names == [*LABEL_KEY, *LABEL_EXTRAS[kind]]
        assert extra.select(list(LABEL_KEY)).equals(meds.select(list(LABEL_KEY)))
    if kind == "time_to_event":  # MEDS view: event observed, days to event or censoring (float32)
        assert meds.column("boolean_value").to_pylist() == (ref["event"] == 1).tolist()
        np.testing.assert_allclose(meds.column("float_value").to_numpy(), ref["duration_days"], rtol=1e-6)
    if kind == "forecast":  # MEDS view: how many target codes
        assert meds.column("integer_value").to_pylist() == ref["target_codes"].map(len).tolist()
    back = read_labels(path, kind)
    assert back.schema == LABELS_SCHEMA and back.equals(table)
    assert read_task_labels(tmp_path, task).equals(table)  # kind from the sidecar alone (no tasks.json)


def test_split_labels_rejects_a_missing_label_naming_the_column(engine_labels: dict[str, pa.Table]) -> None:
    tte = engine_labels["death_1y_tte"]
    bad = tte.set_column(tte.schema.get_field_index("event"), "event", pa.nulls(tte.num_rows, pa.int8()))
    with pytest.raises(ValueError, match=rf"task 'death_1y_tte': .*'event' is null in {tte.num_rows} of"):
        split_labels(bad, "time_to_event", "death_1y_tte")
    with pytest.raises(ValueError, match="kind must be one of"):
        split_labels(tte, "survival", "death_1y_tte")


def _old_folder(table: pa.Table, path: Path) -> None:
    """A label table as ehrfm wrote it before: a folder of parts, every column inline, float64 values."""
    old = pa.schema([f.with_type(pa.float64()) if f.name == "float_value" else f for f in LABELS_SCHEMA])
    path.mkdir(parents=True)
    half = table.num_rows // 2
    for i, part in enumerate((table.slice(0, half), table.slice(half))):
        pq.write_table(part.cast(old), path / f"part-0000{i}-x.snappy.parquet")
    (path / "_SUCCESS").write_text("")


def test_every_reader_reads_the_new_and_the_old_layout(engine_labels: dict[str, pa.Table],
                                                       tmp_path: Path) -> None:
    new, old = tmp_path / "new", tmp_path / "old"
    for task, table in engine_labels.items():
        write_labels(table, KINDS[task], new, task)
        _old_folder(table, old / f"{task}.parquet")
    (new / "tasks.json").write_text(json.dumps(KINDS))
    assert Layout(labels=str(new)).label_tasks() == sorted(KINDS)  # sidecars are not tasks
    names = sorted(KINDS)
    for folder in (new, old):
        stacked = tasks_table(folder, names)
        assert stacked.schema == LABELS_SCHEMA.append(pa.field(TASK, pa.string()))
        for task, table in engine_labels.items():
            assert read_task_labels(folder, task).equals(table), (folder.name, task)
            rows = stacked.filter(pa.compute.equal(stacked.column(TASK), task)).drop_columns([TASK])
            assert rows.equals(table)
        # the evaluation and tokenizer readers: the same rows, the kind found from the columns
        frames = load_labels(folder)
        assert sorted(frames) == names
        for task, frame in frames.items():
            kind = {"binary": "binary", "time_to_event": "tte", "forecast": "forecast"}[KINDS[task]]
            assert task_kind(frame, task) == kind
            pd.testing.assert_frame_equal(frame, engine_labels[task].to_pandas(), check_dtype=False)
        tok = read_label_tables(folder, names)
        assert len(tok) == sum(t.num_rows for t in engine_labels.values())
        assert tok.groupby(TASK).size().to_dict() == {t: v.num_rows for t, v in engine_labels.items()}


def test_time_to_event_file_without_its_sidecar_reads_from_the_meds_columns(
        engine_labels: dict[str, pa.Table], tmp_path: Path) -> None:
    table = engine_labels["death_1y_tte"]
    write_labels(table, "time_to_event", tmp_path, "death_1y_tte")
    Layout(labels=str(tmp_path)).label_extras("death_1y_tte").unlink()
    got = read_task_labels(tmp_path, "death_1y_tte", "time_to_event").to_pandas()
    assert got["event"].tolist() == table.column("event").to_pylist()
    np.testing.assert_allclose(got["duration_days"], table.column("duration_days").to_numpy(), rtol=1e-6)
    # without the kind it is a plain MEDS label file: binary, labelled by boolean_value (= event)
    binary = read_task_labels(tmp_path, "death_1y_tte")
    assert binary.column("boolean_value").to_pylist() == (got["event"] == 1).tolist()
    write_labels(engine_labels["next_visit_codes"], "forecast", tmp_path, "fc")
    Layout(labels=str(tmp_path)).label_extras("fc").unlink()
    with pytest.raises(ValueError, match=r"task 'fc' \(forecast\): no column target_codes in its sidecar"):
        read_task_labels(tmp_path, "fc", "forecast")


def test_a_sidecar_of_another_run_is_refused_or_ignored(engine_labels: dict[str, pa.Table],
                                                        tmp_path: Path) -> None:
    tte = engine_labels["death_1y_tte"]
    write_labels(tte, "time_to_event", tmp_path, "t")
    layout = Layout(labels=str(tmp_path))
    sidecar = pq.read_table(layout.label_extras("t"))
    pq.write_table(sidecar.slice(1), layout.label_extras("t"))
    with pytest.raises(ValueError, match=rf"t.extra.parquet has {tte.num_rows - 1} rows, the label file"):
        read_task_labels(tmp_path, "t")
    shifted = sidecar.set_column(0, SUBJECT_ID, pa.compute.add(sidecar.column(SUBJECT_ID), 1))
    pq.write_table(shifted, layout.label_extras("t"))
    with pytest.raises(ValueError, match="column 'subject_id' differs from the label file's"):
        read_task_labels(tmp_path, "t")
    # a task now binary (tasks.json says so) keeps no sidecar of its time-to-event past
    write_labels(engine_labels["readmission_30d"], "binary", tmp_path, "t")
    assert not layout.label_extras("t").exists()
    pq.write_table(sidecar, layout.label_extras("t"))
    layout.label_kinds.write_text(json.dumps({"t": "binary"}))
    assert read_kinds(tmp_path) == {"t": "binary"}
    assert read_task_labels(tmp_path, "t").equals(engine_labels["readmission_30d"])


def aces_format(labels: pa.Table) -> pa.Table:
    """A binary label table as ACES 0.7 writes it (``get_and_validate_label_schema``): the six MEDS columns,
    every field nullable, the unused value columns all null (so it fails ``LabelSchema.validate`` itself,
    which forbids nulls in a present value column), ``float_value`` float32; plus columns earlier ACES
    versions kept (the trigger time, a window summary struct)."""
    n = labels.num_rows
    return pa.table({
        SUBJECT_ID: labels.column(SUBJECT_ID), PREDICTION_TIME: labels.column(PREDICTION_TIME),
        "boolean_value": labels.column("boolean_value"), "integer_value": pa.nulls(n, pa.int64()),
        "float_value": pa.nulls(n, pa.float32()), "categorical_value": pa.nulls(n, pa.string()),
        "trigger": labels.column(PREDICTION_TIME),
        "target.end_summary": pa.array([{"n_events": i % 3} for i in range(n)]),
    })


def test_aces_label_files_are_binary_tasks(engine_labels: dict[str, pa.Table], tmp_path: Path) -> None:
    ref = engine_labels["readmission_30d"]
    aces = aces_format(ref)
    with pytest.raises(Exception, match="no nulls"):
        LabelSchema.validate(aces.select(MEDS_LABEL_SCHEMA.names))
    pq.write_table(aces, tmp_path / "readmit.parquet")
    (tmp_path / "readmit").mkdir()  # ACES' hydra log folder beside the file: not a task
    assert Layout(labels=str(tmp_path)).label_tasks() == ["readmit"]
    assert read_task_labels(tmp_path, "readmit").equals(ref)
    # a timezone-aware prediction_time (UTC instant) and int32 subject ids are the same labels
    utc = aces.set_column(1, PREDICTION_TIME, aces.column(PREDICTION_TIME).cast(pa.timestamp("us", "UTC")))
    utc = utc.set_column(0, SUBJECT_ID, utc.column(SUBJECT_ID).cast(pa.int32()))
    pq.write_table(utc, tmp_path / "readmit.parquet")
    assert read_task_labels(tmp_path, "readmit").equals(ref)
    # two trigger events at one instant repeat a key: kept once (said), unless their labels differ
    twice = pa.concat_tables([aces, aces.slice(0, 3)])
    pq.write_table(twice, tmp_path / "readmit.parquet")
    with pytest.warns(UserWarning, match=r"task 'readmit': 3 rows repeat an earlier"):
        assert read_task_labels(tmp_path, "readmit").equals(ref)
    flipped = aces.slice(0, 1).set_column(2, "boolean_value", pa.compute.invert(aces.column(2).slice(0, 1)))
    pq.write_table(pa.concat_tables([aces, flipped]), tmp_path / "readmit.parquet")
    with pytest.raises(ValueError, match="repeats with different labels"):
        read_task_labels(tmp_path, "readmit")


def test_aces_files_without_a_usable_label_are_clear_errors(engine_labels: dict[str, pa.Table],
                                                            tmp_path: Path) -> None:
    aces = aces_format(engine_labels["readmission_30d"])
    n = aces.num_rows
    # an ACES config without index_timestamp writes null prediction times
    no_time = aces.set_column(1, PREDICTION_TIME, pa.nulls(n, pa.timestamp("us")))
    pq.write_table(no_time, tmp_path / "a.parquet")
    with pytest.raises(ValueError, match=rf"task 'a': a.parquet: column 'prediction_time' is null in {n} of"):
        read_task_labels(tmp_path, "a")
    pq.write_table(aces.drop_columns(["boolean_value"]), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match=r"task 'b' \(binary\): no column boolean_value in the label file"):
        read_task_labels(tmp_path, "b")
    pq.write_table(aces.set_column(2, "boolean_value", pa.nulls(n, pa.bool_())), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match=r"'boolean_value' \(the binary label\) is null in"):
        read_task_labels(tmp_path, "c")
    pq.write_table(aces.set_column(1, PREDICTION_TIME, pa.array(["x"] * n)), tmp_path / "d.parquet")
    with pytest.raises(ValueError, match="column 'prediction_time' of type string does not convert"):
        read_task_labels(tmp_path, "d")
    with pytest.raises(FileNotFoundError, match=r"task 'e': no label table .*e\.parquet \(have: \['a'"):
        read_task_labels(tmp_path, "e")


# an admission within 30 days of a discharge (no follow-up or death criteria: ACES keeps every discharge)
ACES_READMISSION = """\
predicates:
  discharge: {code: ENCOUNTER//INPATIENT//END}
  admission: {code: ENCOUNTER//INPATIENT//START}
trigger: discharge
windows:
  input: {start: null, end: trigger, start_inclusive: true, end_inclusive: true, index_timestamp: end}
  target: {start: input.end, end: start + 30d, start_inclusive: false, end_inclusive: true, label: admission}
"""


def test_a_real_aces_label_file_reads_as_a_binary_task(tmp_path: Path) -> None:
    """``aces-cli`` (es-aces, a dev extra) on a small MEDS dataset; skipped where it is not installed."""
    cli = Path(sys.executable).parent / "aces-cli"
    if not cli.exists():
        pytest.skip("aces-cli not installed (pip install -e .[dev])")
    events = random_population(40, seed=2)
    write_meds(events, tmp_path / "meds", n_files=1)
    out = tmp_path / "aces"
    out.mkdir()
    (out / "readmit.yaml").write_text(ACES_READMISSION)
    data = next((tmp_path / "meds" / "data").rglob("*.parquet"))
    subprocess.run([str(cli), "data=single_file", f"data.path={data}", "data.standard=meds",
                    f"cohort_dir={out}", "cohort_name=readmit"], check=True, capture_output=True, cwd=out)
    raw = pq.read_table(out / "readmit.parquet")
    assert raw.num_rows > 0 and "boolean_value" in raw.column_names
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no repeated keys in this population: nothing dropped
        got = read_task_labels(out, "readmit")
    want = raw.select(["subject_id", "prediction_time", "boolean_value"]).sort_by(
        [(SUBJECT_ID, "ascending"), (PREDICTION_TIME, "ascending")])
    assert got.select(want.column_names).equals(want.cast(got.select(want.column_names).schema))
    assert got.column("boolean_value").to_pylist().count(True) > 0


@pytest.mark.spark
def test_spark_reader_equals_the_arrow_reader(spark: object, engine_labels: dict[str, pa.Table],
                                              tmp_path: Path) -> None:
    for task, table in engine_labels.items():
        write_labels(table, KINDS[task], tmp_path, task)
    names = sorted(KINDS)
    df = tasks_spark(spark, tmp_path, names)  # type: ignore[arg-type]
    assert df is not None and tasks_spark(spark, tmp_path, []) is None  # type: ignore[arg-type]
    assert df.columns == [*LABELS_SCHEMA.names, TASK]
    assert df.schema[PREDICTION_TIME].dataType.typeName() == "timestamp_ntz"  # naive, as MEDS times
    want = tasks_table(tmp_path, names)
    assert df.toArrow().cast(want.schema).equals(want)
    assert tasks_frame(tmp_path, names).equals(want.to_pandas())


@pytest.mark.slow
def test_aces_labels_through_prepare_tokenize_finetune_evaluate(engine_labels: dict[str, pa.Table],
                                                                tmp_path: Path) -> None:
    """A binary task known only from an ACES-format label file (no task YAML, no tasks.json): ``ehrfm
    prepare --tasks [it]`` gives it a prompt token, then tokenize, finetune and evaluate run on it."""
    from ehrfm.cli import main

    events = random_population(80, seed=5)
    write_meds(events, tmp_path / "meds")
    aces_dir = tmp_path / "aces"
    aces_dir.mkdir()
    pq.write_table(aces_format(engine_labels["readmission_30d"]), aces_dir / "readmit_aces.parquet")
    where = ["--root", str(tmp_path), "--labels", str(aces_dir), "--tokens", str(tmp_path / "tok"),
             "--evaluation", str(tmp_path / "eval")]
    model = ["--model.d_model", "16", "--model.n_layers", "1", "--model.d_state", "4", "--model.headdim", "8",
             "--model.n_heads", "2", "--model.chunk_size", "16"]
    train = ["--data.max_tokens", "512", "--trainer.progress_bar", "false", "--trainer.max_steps", "2"]
    prepare = ["--min_count", "1", "--tasks", "[readmit_aces]", "--engine", "local"]
    assert main(["prepare", *where, *prepare]) == 0
    assert main(["tokenize", *where, "--tasks", "[readmit_aces]", "--engine", "local"]) == 0
    tokens = pq.read_table(tmp_path / "tok" / "tasks" / "readmit_aces")
    assert tokens.num_rows == engine_labels["readmission_30d"].num_rows
    assert set(tokens.column("label").to_pylist()) == {0.0, 1.0}
    assert main(["pretrain", *where, *model, *train]) == 0
    assert main(["finetune", *where, *train, "--tasks", "[readmit_aces]"]) == 0
    assert main(["evaluate", *where, "--report.n_boot", "0"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert list(report["tasks"]) == ["readmit_aces"]
    assert report["tasks"]["readmit_aces"]["kind"] == "binary"
    assert report["tasks"]["readmit_aces"]["n_labels"] == tokens.num_rows
