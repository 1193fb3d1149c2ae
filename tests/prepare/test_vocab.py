"""Vocabulary: fixed tokens, train-only counting, min-count → [UNK], no leakage from held-out/tuning data."""

from __future__ import annotations

import os
import sys

import pandas as pd
import pytest

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark workers use this interpreter

from ehrfm.prepare.vocab import (  # noqa: E402
    FIXED_DEMOGRAPHIC_TOKENS,
    build_vocab,
    count_codes_pandas,
    count_codes_spark,
    task_names_from_dir,
)
from ehrfm.schema import INTERVAL_TOKENS, SPECIAL_TOKENS, UNK_ID, task_token  # noqa: E402
from ehrfm.vocab import Vocabulary  # noqa: E402

SPLITS = pd.DataFrame({"subject_id": [1, 2, 3, 4], "split": ["train", "train", "tuning", "held_out"]})


def events(rows: list[tuple[int, str]]) -> pd.DataFrame:
    return pd.DataFrame({"subject_id": [r[0] for r in rows], "code": [r[1] for r in rows],
                         "numeric_value": [None] * len(rows)})


BASE = ([(1, "A")] * 3 + [(2, "A")] * 2 + [(1, "B")] * 5 + [(2, "C")] + [(1, "MEDS_BIRTH")] * 9 + [(3, "A"),
                                                                                                   (4, "D")])


def fit(rows: list[tuple[int, str]], min_count: int = 2) -> Vocabulary:
    return build_vocab(count_codes_pandas(events(rows), SPLITS), min_count=min_count, n_bins=3,
                       tasks=["b_task", "a_task"])


def test_layout_fixed_tokens_and_min_count() -> None:
    v = fit(BASE)
    n_fixed = len(SPECIAL_TOKENS) + len(INTERVAL_TOKENS) + 3 + len(FIXED_DEMOGRAPHIC_TOKENS) + 2
    assert tuple(v.tokens[:7]) == SPECIAL_TOKENS
    assert v.tokens[7 : 7 + len(INTERVAL_TOKENS)] == list(INTERVAL_TOKENS)
    assert v.tokens[7 + len(INTERVAL_TOKENS) : n_fixed] == [
        "[Q0]", "[Q1]", "[Q2]", *FIXED_DEMOGRAPHIC_TOKENS, task_token("a_task"), task_token("b_task")
    ]
    assert v.tokens[n_fixed:] == ["A", "B"]  # count desc then name; C (1 < min_count) dropped
    assert v.id("C") == UNK_ID and v.id("D") == UNK_ID  # D only on held_out
    assert "MEDS_BIRTH" not in v and v.counts == {"A": 5, "B": 5}
    with pytest.raises(ValueError, match="min_count"):
        fit(BASE, min_count=0)


def test_held_out_and_tuning_changes_do_not_change_the_vocab(tmp_path) -> None:
    base = fit(BASE)
    other = fit(BASE + [(3, "NEW")] * 50 + [(4, "C")] * 50 + [(4, "A")] * 9)
    base.save(tmp_path / "a.json")
    other.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_train_changes_do_change_the_vocab() -> None:
    assert fit(BASE + [(2, "C")]).tokens != fit(BASE).tokens  # C reaches min_count
    assert fit(BASE + [(1, "B")]).counts != fit(BASE).counts


def test_task_names_from_yaml(tmp_path) -> None:
    (tmp_path / "x.yaml").write_text("name: readmit\nkind: binary\n")
    (tmp_path / "y.yaml").write_text("kind: binary\n")
    assert task_names_from_dir(tmp_path) == ["readmit", "y"]
    (tmp_path / "z.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="z.yaml: a task file must be a YAML mapping"):
        task_names_from_dir(tmp_path)


@pytest.mark.spark
def test_spark_counts_equal_pandas(spark) -> None:
    ev = events(BASE + [(3, "NEW")] * 4)
    assert count_codes_spark(spark.createDataFrame(ev[["subject_id", "code"]]),
                             spark.createDataFrame(SPLITS)) == count_codes_pandas(ev, SPLITS)
