"""``ehrfm prepare`` as a stage (``run(PrepareConfig, Layout)``, local engine): files, summary, task prompt
tokens (named, every packaged task, none, a tasks folder) and clear errors. The Spark engine is checked
against this one in tests/tokenize/test_spark_parity.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pytest
from helpers.meds import write_meds

from ehrfm.config.base import ConfigError
from ehrfm.config.prepare import PrepareConfig, PrepareSummary
from ehrfm.labels.parse import available_tasks
from ehrfm.layout import Layout
from ehrfm.prepare.bins import load_bins
from ehrfm.prepare.stage import run
from ehrfm.schema import task_token
from ehrfm.vocab import Vocabulary

LOCAL = PrepareConfig(min_count=1, n_bins=4, engine="local")


def _events() -> pd.DataFrame:
    rows = [(1, "LAB//A", 1.0), (1, "LAB//A", 2.0), (1, "DX//X", None), (2, "LAB//A", 3.0),
            (2, "DX//Y", None), (3, "LAB//A", 4.0), (4, "RARE//Z", 9.0)]
    df = pd.DataFrame(rows, columns=["subject_id", "code", "numeric_value"])
    return df.assign(time=pd.Timestamp("2020-01-01"), encounter_id=None,
                     numeric_value=df["numeric_value"].astype("float32"))


@pytest.fixture()
def layout(tmp_path: Path) -> Layout:
    """A pipeline root with an ingested MEDS dataset (4 subjects, 3 of them in train)."""
    splits = pd.DataFrame({"subject_id": [1, 2, 3, 4], "split": ["train", "train", "train", "held_out"]})
    lay = Layout(root=str(tmp_path))
    write_meds(lay.meds_paths.root, _events(), splits)
    return lay


def test_writes_vocab_bins_and_prepare_json(layout: Layout, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = LOCAL.replace(tasks=["t2", "t1"])
    summary = run(cfg, layout)
    assert cfg.tasks == ["t2", "t1"]  # not changed by the run
    paths = layout.token_paths
    vocab, bins = Vocabulary.load(paths.vocab), load_bins(paths.bins)
    assert summary.tasks == ["t1", "t2"] and task_token("t1") in vocab and task_token("t2") in vocab
    assert summary.train_subjects == 3 and summary.vocab_size == len(vocab)
    assert summary.codes_kept == len(vocab.counts) and summary.codes_with_bins == len(bins.edges) == 1
    assert "RARE//Z" not in vocab  # subject 4 is held out: its codes are never counted
    saved = json.loads(paths.prepare_json.read_text())
    assert PrepareConfig.from_dict(saved["config"]) == cfg
    assert PrepareSummary.from_dict(saved["summary"]) == summary
    out = capsys.readouterr().out
    assert "vocab_size" in out and "t1, t2" in out


def test_task_tokens_default_none_and_folder(tmp_path: Path, layout: Layout) -> None:
    packaged = run(LOCAL, layout)
    assert packaged.tasks == sorted(available_tasks()) and len(packaged.tasks) >= 6
    none = run(LOCAL.replace(task_tokens=False), layout)
    assert none.tasks == [] and none.vocab_size == packaged.vocab_size - len(packaged.tasks)
    assert not any(t.startswith("[TASK:") for t in Vocabulary.load(layout.token_paths.vocab).tokens)
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    (folder / "a.yaml").write_text("name: alpha\n")
    assert run(LOCAL.replace(tasks_dir=str(folder)), layout).tasks == ["alpha"]


def test_clear_errors(tmp_path: Path, layout: Layout) -> None:
    with pytest.raises(FileNotFoundError, match="tasks_dir=.*not a folder"):
        run(LOCAL.replace(tasks_dir=str(tmp_path / "none")), layout)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no task YAML files"):
        run(LOCAL.replace(tasks_dir=str(tmp_path / "empty")), layout)
    with pytest.raises(FileNotFoundError, match="no data/ folder"):
        run(LOCAL, dataclasses.replace(layout, meds=str(tmp_path / "nowhere")))
    layout.meds_paths.subject_splits.unlink()
    with pytest.raises(FileNotFoundError, match=r"subject_splits\.parquet: missing \(run `ehrfm ingest`"):
        run(LOCAL, layout)
