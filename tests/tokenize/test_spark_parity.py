"""One rule, two engines: the Spark path equals direct per-patient calls exactly; the CLI end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from helpers.meds import write_labels, write_meds
from tok_helpers import population

from ehrfm.cli import main
from ehrfm.layout import Layout
from ehrfm.prepare.bins import Bins, load_bins
from ehrfm.schema import EVENTS_SCHEMA, LABELS_SCHEMA, TOKENS_SCHEMA
from ehrfm.tokenize import TokenizerConfig, read_tokenizer_config
from ehrfm.tokenize.direct import iter_rows, read_tokens, rows_to_table, tokens_equal
from ehrfm.tokenize.spark_job import tokenize_spark, write_tokens
from ehrfm.vocab import Vocabulary

KEY = [("task", "ascending"), ("subject_id", "ascending"), ("prediction_time", "ascending")]


def _sorted(t: pa.Table) -> pa.Table:
    return t.sort_by(KEY).combine_chunks()


@pytest.mark.spark
def test_spark_path_equals_direct_calls(spark: Any, vocab: Vocabulary, bins: Bins, tmp_path: Path) -> None:
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
def test_spark_path_without_labels_equals_direct_pretrain_rows(spark: Any, vocab: Vocabulary,
                                                               bins: Bins) -> None:
    """No label tables (pretraining rows only): a plain groupBy, whose function takes one argument."""
    events, _, splits = population()
    cfg = TokenizerConfig(max_len=14)
    split_of = dict(zip(splits["subject_id"], splits["split"], strict=True))
    direct = rows_to_table(list(iter_rows(events, None, split_of, vocab, bins, cfg)))
    ev_tab = pa.Table.from_pandas(events.assign(text_value=None, unit=None, source=None)[EVENTS_SCHEMA.names],
                                  schema=EVENTS_SCHEMA, preserve_index=False)
    rows = tokenize_spark(spark.createDataFrame(ev_tab.to_pandas()), None, spark.createDataFrame(splits),
                          vocab, bins, cfg)
    via_spark = pa.Table.from_pandas(rows.toPandas(), preserve_index=False)
    assert via_spark.num_rows == direct.num_rows == 4
    assert tokens_equal(_sorted(via_spark.cast(TOKENS_SCHEMA)), _sorted(direct))

@pytest.mark.spark
def test_cli_prepare_and_tokenize_end_to_end(spark: Any, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    events, labels, splits = population()
    write_meds(tmp_path / "meds", events, splits)
    lab_dir = write_labels(tmp_path / "labels", labels)
    root = ["--root", str(tmp_path)]
    prep = ["--min_count", "1", "--n_bins", "4", "--tasks", "[t1,t2]"]
    assert main(["prepare", *root, *prep]) == 0
    assert main(["tokenize", *root, "--tokenizer.max_len", "64"]) == 0
    text = capsys.readouterr().out
    assert "len_p99" in text and "(pretrain)" in text
    out = Layout(root=str(tmp_path)).token_paths
    pre, t1 = read_tokens(out.pretrain), read_tokens(out.task("t1"))
    assert pre.num_rows == 4 and t1.num_rows == 5
    assert set(pre.column("split").to_pylist()) == {"train", "tuning", "held_out"}
    assert read_tokenizer_config(out.root).max_len == 64
    # the same through the one-process engine, into another tokens folder
    local = Layout(root=str(tmp_path), tokens=str(tmp_path / "tokens_local")).token_paths
    assert main(["prepare", *root, "--tokens", str(local.root), *prep, "--engine", "local"]) == 0
    assert local.vocab.read_text() == out.vocab.read_text()
    # bins: exact (interpolated) locally, observed values within the rank error in Spark (tests/prepare)
    assert load_bins(local.bins).edges.keys() == load_bins(out.bins).edges.keys()
    # tokens from the same bins are identical between the engines
    local.bins.write_bytes(out.bins.read_bytes())
    assert main(["tokenize", *root, "--tokens", str(local.root), "--tokenizer.max_len", "64",
                 "--engine", "local"]) == 0
    for sub in (out.pretrain, out.task("t1"), out.task("t2")):
        other = local.root / sub.relative_to(out.root)
        assert tokens_equal(_sorted(read_tokens(other)), _sorted(read_tokens(sub))), sub
    (lab_dir / "t3.parquet").write_bytes((lab_dir / "t1.parquet").read_bytes())
    capsys.readouterr()
    assert main(["tokenize", *root, "--engine", "local"]) == 2
    assert "no prompt token [TASK:t3]" in capsys.readouterr().err


@pytest.mark.spark
def test_spark_summary_within_the_stated_rank_error(spark: Any, vocab: Vocabulary, bins: Bins) -> None:
    """The Spark engine's summary (one aggregate, no rows to the driver) equals the local engine's exactly,
    except the length percentiles: observed lengths whose rank in their group is within n/accuracy of q*n."""
    import numpy as np
    import pandas as pd

    from ehrfm.tokenize.direct import summarize
    from ehrfm.tokenize.spark_job import summarize_spark

    events, labels, _ = population()
    cfg = TokenizerConfig(max_len=64)
    # many rows of varied lengths: subject copies with 1..n events, so the percentiles are not trivial
    copies = [events.assign(subject_id=events["subject_id"] + 10 * k).groupby("subject_id").head(1 + k % 9)
              for k in range(40)]
    direct = rows_to_table(list(iter_rows(pd.concat(copies, ignore_index=True), labels, None, vocab, bins,
                                          cfg)))
    frame = direct.select(["task", "split", "length", "label", "event"]).to_pandas()
    frame = frame.assign(split=["train" if i % 3 == 0 else None for i in range(len(frame))])
    rows = spark.createDataFrame(frame)
    want = summarize(frame)
    assert len(want) == 5 and want["rows"].max() > 100  # the pretrain groups are large
    for accuracy in (4, 10_000):
        got = summarize_spark(rows, accuracy=accuracy)
        assert got[["task", "split", "rows", "len_max"]].values.tolist() == \
            want[["task", "split", "rows", "len_max"]].values.tolist()
        for col in ("label_mean", "event_rate"):
            assert np.allclose(got[col], want[col].astype("float64"), rtol=1e-6, equal_nan=True), col
        keyed = frame.assign(task=frame["task"].fillna("(pretrain)"), split=frame["split"].fillna("(none)"))
        for _, r in got.iterrows():
            lengths = keyed.loc[(keyed["task"] == r["task"]) & (keyed["split"] == r["split"]), "length"]
            values, n = lengths.to_numpy(), len(lengths)
            for q, col in ((0.5, "len_p50"), (0.9, "len_p90"), (0.99, "len_p99")):
                assert r[col] in set(values.tolist()), col
                below, at_or_below = int((values < r[col]).sum()), int((values <= r[col]).sum())
                assert below <= q * n + n / accuracy and at_or_below >= q * n - n / accuracy, (col, r)
