"""``ehrfm prepare`` + ``ehrfm tokenize`` on Hadoop-compatible URIs: the local engines on S3 (moto, pyarrow)
and the Spark engines on viewfs:// (a scheme only Hadoop serves, so no driver-local path is used) write the
same vocab/bins and token rows as runs on local folders; label tables may be single files or folders of
part files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers.meds import write_labels, write_meds
from helpers.remote import stray_uri_folders, upload
from tok_helpers import population

from ehrfm import storage
from ehrfm.atomic import PartialOutputError
from ehrfm.config.prepare import PrepareConfig
from ehrfm.config.tokenize import TokenizeConfig, TokenizerConfig
from ehrfm.layout import Layout
from ehrfm.prepare.stage import run as prepare
from ehrfm.tokenize import read_tokenizer_config
from ehrfm.tokenize.direct import read_tokens, tokens_equal
from ehrfm.tokenize.stage import run as tokenize

KEY = [("task", "ascending"), ("subject_id", "ascending"), ("prediction_time", "ascending")]
ROWS = ("pretrain", "tasks/t1", "tasks/t2")


def _inputs(root: Path, parts: bool) -> Path:
    """MEDS and label tables t1, t2 of tok_helpers.population under ``root``; with ``parts`` the label table
    t1 is a folder of part files (``t1.parquet/part-*.parquet``, as Spark writes)."""
    events, labels, splits = population()
    write_meds(root / "meds", events, splits)
    write_labels(root / "labels", labels)
    if parts:
        single = root / "labels" / "t1.parquet"
        table = pq.read_table(single)
        single.unlink()
        single.mkdir()
        pq.write_table(table.slice(0, 2), single / "part-00000.parquet")
        pq.write_table(table.slice(2), single / "part-00001.parquet")
    return root


def _outputs(tokens: str) -> tuple[dict[str, str], dict[str, pa.Table], dict[str, Any]]:
    texts = {f: storage.read_text(storage.join(tokens, f)) for f in ("vocab.json", "bins.json")}
    rows = {rel: read_tokens(storage.join(tokens, rel)).sort_by(KEY).combine_chunks() for rel in ROWS}
    meta = json.loads(storage.read_text(storage.join(tokens, "tokenize.json")))
    meta["summary"].pop("seconds")
    return texts, rows, meta


def _both(engine: str, tmp_path: Path, remote: str, parts: bool) -> None:
    """Prepare and tokenize a local pipeline root and ``remote`` (the same input files) with ``engine``; the
    outputs are equal."""
    prep = PrepareConfig(min_count=1, n_bins=4, tasks=["t1", "t2"], engine=engine)  # type: ignore[arg-type]
    tok = TokenizeConfig(tokenizer=TokenizerConfig(max_len=32), engine=engine)  # type: ignore[arg-type]
    local = Layout(root=str(_inputs(tmp_path / "local", parts)))
    upload(Path(local.root), remote)
    lay = Layout(root=remote)
    for layout in (local, lay):
        prepare(prep, layout)
        summary = tokenize(tok, layout)
        assert summary.tasks == ["t1", "t2"] and summary.n_rows == 4 + 5 + 1
    want, got = _outputs(local.tokens_uri), _outputs(lay.tokens_uri)
    assert got[0] == want[0]  # vocab.json, bins.json
    for rel in ROWS:
        assert got[1][rel].num_rows and tokens_equal(got[1][rel], want[1][rel]), rel
    assert got[2] == want[2]  # tokenize.json: tokenizer config and summary
    assert read_tokenizer_config(lay.tokens_uri).max_len == 32
    assert stray_uri_folders(tmp_path, Path.cwd()) == []
    # a rerun on the remote folder replaces it in place; one without its marker is refused
    storage.delete(storage.join(lay.tokens_uri, "tokenize.json"))
    with pytest.raises(PartialOutputError, match="tokenize.json"):
        tokenize(tok, lay)
    tokenize(dataclasses.replace(tok, overwrite=True), lay)
    assert _outputs(lay.tokens_uri)[1].keys() == want[1].keys()


@pytest.mark.parametrize("parts", [False, True])
def test_local_engines_on_s3_equal_local_folders(s3: Any, tmp_path: Path, parts: bool) -> None:
    _both("local", tmp_path, storage.join(s3.uri, "x"), parts)


@pytest.mark.spark
@pytest.mark.parametrize("parts", [False, True])
def test_spark_engines_on_viewfs_equal_local_folders(spark: Any, viewfs: Any, tmp_path: Path,
                                                      parts: bool) -> None:
    _both("spark", tmp_path, viewfs.uri, parts)
    assert (viewfs.local / "tokens" / "tokenize.json").is_file()  # written through Hadoop's mount
