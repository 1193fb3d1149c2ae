"""One rule, two engines: the Spark path equals direct per-patient calls exactly; the CLI end to end."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tok_helpers import population

from ehrfm.cli import main
from ehrfm.schema import EVENTS_SCHEMA, LABELS_SCHEMA, SPLITS_SCHEMA, TOKENS_SCHEMA
from ehrfm.tokenize import TokenizerConfig
from ehrfm.tokenize.direct import iter_rows, read_tokens, rows_to_table, tokens_equal
from ehrfm.tokenize.spark_job import tokenize_spark, write_tokens

KEY = [("task", "ascending"), ("subject_id", "ascending"), ("prediction_time", "ascending")]


def _sorted(t: pa.Table) -> pa.Table:
    return t.sort_by(KEY).combine_chunks()


def write_meds(root: Path, events: pd.DataFrame, splits: pd.DataFrame) -> Path:
    """A minimal MEDS dataset folder (data/ + metadata/subject_splits.parquet)."""
    (root / "data").mkdir(parents=True)
    (root / "metadata").mkdir()
    ev = events.assign(text_value=None, unit=None, source="test")[EVENTS_SCHEMA.names]
    pq.write_table(pa.Table.from_pandas(ev, schema=EVENTS_SCHEMA, preserve_index=False), root / "data" / "part-0.parquet")
    pq.write_table(pa.Table.from_pandas(splits, schema=SPLITS_SCHEMA, preserve_index=False),
                   root / "metadata" / "subject_splits.parquet")
    return root


def write_labels(root: Path, labels: pd.DataFrame) -> Path:
    root.mkdir(parents=True)
    for task, g in labels.groupby("task"):
        df = g.drop(columns="task").reindex(columns=LABELS_SCHEMA.names)
        pq.write_table(pa.Table.from_pandas(df, schema=LABELS_SCHEMA, preserve_index=False), root / f"{task}.parquet")
    return root


@pytest.mark.spark
def test_spark_path_equals_direct_calls(spark, vocab, bins, tmp_path) -> None:
    events, labels, splits = population()
    cfg = TokenizerConfig(max_len=14)  # small enough that truncation happens too
    split_of = dict(zip(splits["subject_id"], splits["split"], strict=True))
    direct = rows_to_table(list(iter_rows(events, labels, split_of, vocab, bins, cfg)))

    lab_tab = pa.Table.from_pandas(labels.drop(columns="task").reindex(columns=LABELS_SCHEMA.names),
                                   schema=LABELS_SCHEMA, preserve_index=False)
    sp_labels = spark.createDataFrame(lab_tab.to_pandas().assign(task=labels["task"].to_numpy()))
    ev_tab = pa.Table.from_pandas(events.assign(text_value=None, unit=None, source=None)[EVENTS_SCHEMA.names],
                                  schema=EVENTS_SCHEMA, preserve_index=False)
    sp_events = spark.createDataFrame(ev_tab.to_pandas())
    rows = tokenize_spark(sp_events, sp_labels, spark.createDataFrame(splits), vocab, bins, cfg).persist()
    written = list(write_tokens(rows, tmp_path, ["t1", "t2"]))
    assert [Path(p).relative_to(tmp_path).as_posix() for p in written] == ["pretrain", "tasks/t1", "tasks/t2"]
    via_spark = pa.concat_tables([read_tokens(p) for p in written])
    assert via_spark.schema == TOKENS_SCHEMA
    assert via_spark.num_rows == direct.num_rows == 4 + 6  # 4 subjects with events + 6 labels
    assert tokens_equal(_sorted(via_spark), _sorted(direct))


@pytest.mark.spark
def test_cli_prepare_and_tokenize_end_to_end(spark, tmp_path, capsys) -> None:
    events, labels, splits = population()
    meds = write_meds(tmp_path / "meds", events, splits)
    lab_dir = write_labels(tmp_path / "labels", labels)
    out = tmp_path / "tokens"
    assert main(["prepare", "--meds", str(meds), "--output", str(out), "--min-count", "1", "--n-bins", "4",
                 "--tasks", "t1,t2"]) == 0
    assert main(["tokenize", "--meds", str(meds), "--labels", str(lab_dir), "--output", str(out), "--max-len", "64"]) == 0
    text = capsys.readouterr().out
    assert "len_p99" in text and "(pretrain)" in text
    pre = read_tokens(out / "pretrain")
    t1 = read_tokens(out / "tasks" / "t1")
    assert pre.num_rows == 4 and t1.num_rows == 5
    assert set(pre.column("split").to_pylist()) == {"train", "tuning", "held_out"}
    # the same through the one-process engine
    local = tmp_path / "tokens_local"
    assert main(["prepare", "--meds", str(meds), "--output", str(local), "--min-count", "1", "--n-bins", "4",
                 "--tasks", "t1,t2", "--engine", "local"]) == 0
    assert (local / "vocab.json").read_text() == (out / "vocab.json").read_text()
    assert (local / "bins.json").read_text() == (out / "bins.json").read_text()
    assert main(["tokenize", "--meds", str(meds), "--labels", str(lab_dir), "--output", str(local), "--max-len", "64",
                 "--engine", "local"]) == 0
    for sub in ("pretrain", "tasks/t1", "tasks/t2"):
        assert tokens_equal(_sorted(read_tokens(local / sub)), _sorted(read_tokens(out / sub))), sub
    with pytest.raises(ValueError, match=r"no prompt token \[TASK:t3\]"):
        (lab_dir / "t3.parquet").write_bytes((lab_dir / "t1.parquet").read_bytes())
        main(["tokenize", "--meds", str(meds), "--labels", str(lab_dir), "--output", str(out), "--engine", "local"])
