"""``ehrfm prepare`` and ``ehrfm tokenize`` (local engine) write through ehrfm.atomic: a failed run leaves the
previous tokens as they were, a tokens folder without its marker is refused (or replaced with overwrite),
and a MEDS folder missing a column is named instead of failing in Arrow."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from test_tokenize_stage import PREP
from test_tokenize_stage import layout as prepared  # noqa: F401  (a fixture)

from ehrfm.atomic import IncompleteInputError, PartialOutputError
from ehrfm.config.tokenize import TokenizeConfig
from ehrfm.layout import Layout
from ehrfm.prepare.stage import run as prepare
from ehrfm.tokenize.stage import run as tokenize

TOK = TokenizeConfig(engine="local")


@pytest.fixture()
def layout(prepared: Layout) -> Layout:  # noqa: F811  (the imported fixture, by name)
    """The pipeline root of test_tokenize_stage (MEDS, label tables t1 and t2, vocab/bins), tokenized."""
    tokenize(TOK, prepared)
    return prepared


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_rerun_writes_the_same_bytes(layout: Layout) -> None:
    tokens = layout.token_paths.root
    before = {k: v for k, v in _files(tokens).items() if not k.endswith(".json")}
    tokenize(TOK, layout)
    after = _files(tokens)
    assert {k: v for k, v in after.items() if not k.endswith(".json")} == before
    assert set(after) == set(before) | {"bins.json", "prepare.json", "tokenize.json", "vocab.json"}


def test_failure_mid_write_keeps_previous_tokens(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = layout.token_paths.root
    before = _files(tokens)
    from ehrfm.tokenize import direct

    real = direct.write_local

    def write_then_fail(*args: Any, **kwargs: Any) -> list[str]:
        real(*args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(direct, "write_local", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        tokenize(TOK, layout)
    assert _files(tokens) == before  # rows and marker as they were; no staging folder left
    assert sorted(p.name for p in tokens.iterdir()) == ["bins.json", "prepare.json", "pretrain", "tasks",
                                                        "tokenize.json", "vocab.json"]


def test_tokens_without_marker_refused_then_overwritten(layout: Layout) -> None:
    paths = layout.token_paths
    paths.meta.unlink()  # as an interrupted run leaves it
    with pytest.raises(PartialOutputError) as err:
        tokenize(TOK, layout)
    msg = str(err.value)
    assert f"tokens={str(paths.root)!r}" in msg and "pretrain, tasks/t1, tasks/t2 present" in msg
    assert "tokenize.json" in msg and "--overwrite true" in msg
    tokenize(dataclasses.replace(TOK, overwrite=True), layout)
    assert paths.meta.is_file()


def test_prepare_without_marker_refused_then_overwritten(layout: Layout) -> None:
    paths = layout.token_paths
    paths.prepare_json.unlink()
    with pytest.raises(PartialOutputError, match="vocab.json, bins.json present but prepare.json"):
        prepare(PREP, layout)
    vocab = paths.vocab.read_bytes()
    prepare(dataclasses.replace(PREP, overwrite=True), layout)
    assert paths.prepare_json.is_file() and paths.vocab.read_bytes() == vocab


def test_meds_missing_column_is_named(layout: Layout) -> None:
    data = next(layout.meds_paths.data.glob("*.parquet"))
    pq.write_table(pq.read_table(data).drop(["code"]), data)
    missing = r"MEDS event file without column\(s\) \['code'\]"
    with pytest.raises(IncompleteInputError, match=missing):
        prepare(dataclasses.replace(PREP, overwrite=True), layout)
    with pytest.raises(IncompleteInputError, match=missing):
        tokenize(TOK, layout)


@pytest.mark.spark
def test_spark_engine_publishes_and_rerun_reads_the_same(spark: Any, layout: Layout) -> None:
    """Spark writes its part files (random names) inside the hidden staging folder; published, they read back
    as the local engine's rows, and a rerun replaces them with equal rows and no leftovers."""
    from ehrfm.tokenize.direct import read_tokens

    paths = layout.token_paths
    order = [("subject_id", "ascending"), ("prediction_time", "ascending")]
    local = {rel: read_tokens(paths.root / rel).sort_by(order) for rel in ("pretrain", "tasks/t1")}
    cfg = dataclasses.replace(TOK, engine="spark")
    for _ in range(2):
        tokenize(cfg, layout)
        assert sorted(p.name for p in paths.root.iterdir()) == [
            "bins.json", "prepare.json", "pretrain", "tasks", "tokenize.json", "vocab.json"]
        for rel, table in local.items():
            got = read_tokens(paths.root / rel).sort_by(order)
            assert got.select(["subject_id", "concept_ids"]).to_pylist() == \
                table.select(["subject_id", "concept_ids"]).to_pylist()
