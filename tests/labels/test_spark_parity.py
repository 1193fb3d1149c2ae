"""One rule, two engines, written: ``label_dataset`` with the Spark-expression engine and with the
reference engine (``applyInArrow`` over ``label_subject_rows``) writes the tables the direct pandas path
computes, and the Spark-side summary equals the one computed from those tables -- also when the encounters
are written in MEDS MIMIC-IV ETL codes (``HOSPITAL_ADMISSION//…``): the same tables as with ours."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from meds.schema import LabelSchema

from ehrfm.labels import label_events, load_tasks, parse_spec
from ehrfm.labels.dataset import label_dataset
from ehrfm.labels.direct import read_labels, read_splits, summarize
from ehrfm.schema import LABEL_KEY, MEDS_LABEL_VALUES

from .timelines import after_death_subject, as_meds_etl, random_population, write_meds


@pytest.mark.spark
@pytest.mark.parametrize("convention", ["ehrfm", "meds_etl"])
@pytest.mark.parametrize("engine", ["spark", "reference"])
def test_spark_engines_and_direct_path_are_identical(spark: object, tmp_path: Path, engine: str,
                                                     convention: str) -> None:
    # plus a subject recorded after death (a late stay must not index, be an outcome or a next encounter)
    events = pd.concat([random_population(60, seed=3), after_death_subject(9999)], ignore_index=True)
    specs = load_tasks("all")
    direct = label_events(events, specs)  # always on our codes: the ETL codes must give the same tables
    if convention == "meds_etl":
        events = as_meds_etl(events)
    write_meds(events, tmp_path / "meds")
    summary = label_dataset(spark, tmp_path / "meds", specs, tmp_path / "labels",  # type: ignore[arg-type]
                            engine=engine)
    for spec in specs:
        path = tmp_path / "labels" / f"{spec.name}.parquet"
        # a Spark folder of parts written by the executors (no label row on the driver), valid under
        # meds.LabelSchema, readable with plain pyarrow
        assert path.is_dir() and list(path.glob("part-*.parquet"))
        raw = pq.read_table(path)
        LabelSchema.validate(raw)
        assert raw.schema.remove_metadata().names == [*LABEL_KEY, *MEDS_LABEL_VALUES[spec.kind]]
        got = read_labels(path)
        assert got.num_rows > 0, spec.name
        assert got.equals(direct[spec.name]), spec.name
    expected = summarize(direct, {s.name: s.kind for s in specs}, read_splits(tmp_path / "meds"))
    pd.testing.assert_frame_equal(summary, expected)
    assert set(summary["split"]) == {"all", "train", "tuning", "held_out"}


@pytest.mark.spark
def test_a_task_without_rows_writes_an_empty_table_and_summary_row(spark: object, tmp_path: Path) -> None:
    write_meds(random_population(5, seed=1), tmp_path / "meds")
    never = parse_spec({"name": "never", "kind": "binary", "index": {"codes": "NO//SUCH//CODE"},
                        "prediction_time": "0h", "outcome": {"codes": "MEDS_DEATH", "within": "1d"}})
    with pytest.warns(UserWarning, match="matches no code"):
        summary = label_dataset(spark, tmp_path / "meds", [never], tmp_path / "labels")  # type: ignore[arg-type]
    assert read_labels(tmp_path / "labels" / "never.parquet").num_rows == 0
    counts = summary[["task", "split", "rows", "subjects", "positives"]].values.tolist()
    assert counts == [["never", "all", 0, 0, 0]]
    assert summary["prevalence"].isna().all()


def test_unknown_engine_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="engine: must be one of spark, reference"):
        label_dataset(None, tmp_path, "readmission_30d", tmp_path / "o", engine="polars")  # type: ignore[arg-type]
