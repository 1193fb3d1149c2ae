"""One rule, two engines: Spark (groupBy().applyInArrow) and the direct pandas path give identical labels."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ehrfm.labels import label_events, load_tasks
from ehrfm.labels.dataset import label_dataset
from ehrfm.labels.direct import read_labels
from ehrfm.schema import LABELS_SCHEMA

from .timelines import random_population, write_meds


@pytest.mark.spark
def test_spark_and_direct_paths_are_identical(spark: object, tmp_path: Path) -> None:
    events = random_population(60, seed=3)
    write_meds(events, tmp_path / "meds")
    specs = load_tasks("all")
    direct = label_events(events, specs)
    summary = label_dataset(spark, tmp_path / "meds", specs, tmp_path / "labels")  # type: ignore[arg-type]
    for spec in specs:
        path = tmp_path / "labels" / f"{spec.name}.parquet"
        # written in LABELS_SCHEMA, readable with plain pyarrow
        raw = pq.read_table(path)
        assert raw.schema.remove_metadata().names == LABELS_SCHEMA.names
        assert raw.schema.field("prediction_time").type == LABELS_SCHEMA.field("prediction_time").type
        got = read_labels(path)
        assert got.num_rows > 0, spec.name
        assert got.equals(direct[spec.name]), spec.name
    allrows = summary[summary["split"] == "all"].set_index("task")["rows"]
    assert allrows.to_dict() == {s.name: direct[s.name].num_rows for s in specs}
    assert set(summary["split"]) == {"all", "train", "tuning", "held_out"}
