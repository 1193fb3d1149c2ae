"""``ehrfm tokenize`` as a stage (``run(TokenizeConfig, Layout)``, local engine): what it writes, the recorded
tokenizer config (``max_len``), the task selection, its clear errors, and the generated ``--help``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from helpers.meds import write_labels, write_meds
from tok_helpers import population

from ehrfm.config.base import ConfigError
from ehrfm.config.prepare import PrepareConfig
from ehrfm.config.tokenize import TokenizeConfig, TokenizerConfig, TokenizeSummary
from ehrfm.layout import Layout
from ehrfm.prepare.stage import run as prepare
from ehrfm.tokenize import read_tokenizer_config
from ehrfm.tokenize.direct import read_tokens
from ehrfm.tokenize.stage import run as tokenize

PREP = PrepareConfig(min_count=1, n_bins=4, tasks=["t1", "t2"], engine="local")


@pytest.fixture()
def layout(tmp_path: Path) -> Layout:
    """A pipeline root with MEDS, label tables t1 and t2, and vocab/bins from ``ehrfm prepare``."""
    events, labels, splits = population()
    lay = Layout(root=str(tmp_path))
    write_meds(lay.meds_paths.root, events, splits)
    write_labels(lay.labels_dir, labels)
    prepare(PREP, lay)
    return lay


def test_writes_rows_meta_and_summary(layout: Layout, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = TokenizeConfig(tokenizer=TokenizerConfig(max_len=16), engine="local")
    before = cfg.to_dict()
    summary = tokenize(cfg, layout)
    assert cfg.to_dict() == before  # the caller's config is not changed
    assert isinstance(summary, TokenizeSummary)
    assert summary.tasks == ["t1", "t2"] and summary.pretrain and summary.n_rows == 4 + 6
    paths = layout.token_paths
    pre, t1, t2 = (read_tokens(p) for p in (paths.pretrain, paths.task("t1"), paths.task("t2")))
    assert (pre.num_rows, t1.num_rows, t2.num_rows) == (4, 5, 1)
    assert max(pre.column("length").to_pylist()) <= 16
    assert read_tokenizer_config(paths.root) == TokenizerConfig(max_len=16)
    meta = json.loads(paths.meta.read_text())
    assert TokenizeSummary.from_dict(meta["summary"]) == summary
    assert {(r["task"], r["split"]) for r in summary.rows} >= {("(pretrain)", "train"), ("t1", "train")}
    out = capsys.readouterr().out
    assert "len_p99" in out and "max_len 16" in out


def test_named_tasks_and_pretrain_rows_off_keep_the_pretrain_folder(layout: Layout) -> None:
    tokenize(TokenizeConfig(engine="local"), layout)
    paths = layout.token_paths
    pretrain = sorted(p.read_bytes() for p in paths.pretrain.glob("*.parquet"))
    summary = tokenize(TokenizeConfig(tasks=["t2"], pretrain_rows=False, engine="local"), layout)
    assert summary.tasks == ["t2"] and not summary.pretrain and summary.n_rows == 1
    assert sorted(p.read_bytes() for p in paths.pretrain.glob("*.parquet")) == pretrain


def test_task_rows_off_needs_no_labels(tmp_path: Path, layout: Layout) -> None:
    lay = dataclasses.replace(layout, labels=str(tmp_path / "nowhere"))
    summary = tokenize(TokenizeConfig(task_rows=False, engine="local"), lay)
    assert summary.tasks == [] and summary.n_rows == 4
    with pytest.raises(FileNotFoundError, match="run `ehrfm label`, or set task_rows false"):
        tokenize(TokenizeConfig(engine="local"), lay)


def test_clear_errors(tmp_path: Path, layout: Layout) -> None:
    with pytest.raises(FileNotFoundError, match=r"task 'nope': no label table .*nope\.parquet"):
        tokenize(TokenizeConfig(tasks=["nope"], engine="local"), layout)
    (layout.labels_dir / "t3.parquet").write_bytes(layout.label_table("t1").read_bytes())
    with pytest.raises(ConfigError, match=r"no prompt token \[TASK:t3\]"):
        tokenize(TokenizeConfig(engine="local"), layout)
    with pytest.raises(FileNotFoundError, match=r"no vocab\.json \(run `ehrfm prepare` first"):
        tokenize(TokenizeConfig(engine="local"), dataclasses.replace(layout, tokens=str(tmp_path / "t")))
    with pytest.raises(FileNotFoundError, match="no data/ folder"):
        tokenize(TokenizeConfig(engine="local"), dataclasses.replace(layout, meds=str(tmp_path / "m")))


def test_read_tokenizer_config_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `ehrfm tokenize`"):
        read_tokenizer_config(tmp_path)
    meta = Layout(tokens=str(tmp_path)).token_paths.meta
    meta.write_text(json.dumps({"summary": {}}))
    with pytest.raises(ConfigError, match="no 'config' mapping"):
        read_tokenizer_config(tmp_path)
    meta.write_text(json.dumps({"config": {"max_len": 4}}))
    with pytest.raises(ConfigError, match="max_len=4"):
        read_tokenizer_config(tmp_path)


def test_meta_reader_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = ("import sys; from ehrfm.tokenize import read_tokenizer_config; "
            "print(sorted(m for m in ('pandas', 'numpy', 'pyarrow', 'pyspark', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         timeout=120)
    assert out.stdout.strip() == "[]"


def test_help_lists_the_tokenizer_fields(capsys: pytest.CaptureFixture[str]) -> None:
    from ehrfm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["tokenize", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for f in dataclasses.fields(TokenizerConfig):
        assert f"--tokenizer.{f.name}" in text, f.name
    for flag in ("--tasks", "--task_rows", "--pretrain_rows", "--engine", "--meds", "--labels", "--tokens"):
        assert flag in text, flag
