"""``ehrfm prepare`` on Hadoop-compatible URIs: the local engine on S3 (moto, pyarrow) and the Spark engine on
viewfs:// (a scheme only Hadoop serves) write the same vocab.json / bins.json as a run on local folders."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from helpers.meds import write_meds
from helpers.remote import stray_uri_folders, upload

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark workers use this interpreter

from ehrfm import storage  # noqa: E402
from ehrfm.atomic import PartialOutputError  # noqa: E402
from ehrfm.cli import main  # noqa: E402
from ehrfm.config.prepare import PrepareConfig  # noqa: E402
from ehrfm.layout import Layout  # noqa: E402
from ehrfm.prepare.stage import run  # noqa: E402

FILES = ("vocab.json", "bins.json")


def _meds(folder: Path) -> Path:
    """A small MEDS folder: 12 subjects, numeric labs of two codes, a rare code, all three splits."""
    rng = np.random.default_rng(3)
    rows = []
    for sid in range(1, 13):
        t0 = pd.Timestamp("2020-01-01") + pd.Timedelta(days=sid)
        rows += [(sid, t0, "GENDER//F" if sid % 2 else "GENDER//M", np.nan)]
        rows += [(sid, t0 + pd.Timedelta(hours=h), "LAB//A", float(rng.normal(10, 3))) for h in range(8)]
        rows += [(sid, t0 + pd.Timedelta(hours=h), "LAB//B", float(rng.lognormal(1, 1))) for h in range(5)]
        rows += [(sid, t0, "RARE//Z", 1.0)] if sid == 1 else []
    events = pd.DataFrame(rows, columns=["subject_id", "time", "code", "numeric_value"])
    events = events.assign(encounter_id=None)
    events = events.assign(time=events["time"].astype("datetime64[us]"),
                           numeric_value=events["numeric_value"].astype("float32"))
    splits = pd.DataFrame({"subject_id": range(1, 13),
                           "split": ["train"] * 8 + ["tuning"] * 2 + ["held_out"] * 2})
    return write_meds(folder, events, splits)


def _read(tokens: str) -> dict[str, str]:
    return {f: storage.read_text(storage.join(tokens, f)) for f in FILES}


def _both(cfg: PrepareConfig, tmp_path: Path, remote: str) -> tuple[dict[str, str], dict[str, str]]:
    """Run ``cfg`` on a local pipeline root and on ``remote`` holding the same MEDS files; their outputs."""
    local = Layout(root=str(tmp_path / "local"))
    _meds(Path(local.meds_uri))
    upload(Path(local.meds_uri), storage.join(remote, "meds"))
    run(cfg, local)
    lay = Layout(root=remote)
    summary = run(cfg, lay)
    assert summary.codes_with_bins == 2 and lay.tokens_uri == storage.join(remote, "tokens")
    assert storage.is_file(storage.join(lay.tokens_uri, "prepare.json"))
    assert stray_uri_folders(tmp_path, Path.cwd()) == []
    return _read(local.tokens_uri), _read(lay.tokens_uri)


def test_local_engine_on_s3_equals_local_folders(s3: Any, tmp_path: Path) -> None:
    cfg = PrepareConfig(min_count=2, n_bins=4, tasks=["t1"], engine="local")
    local, remote = _both(cfg, tmp_path, storage.join(s3.uri, "x"))
    assert remote == local
    # a tokens folder on S3 without its marker is refused, as a local one
    storage.delete(storage.join(s3.uri, "x", "tokens", "prepare.json"))
    with pytest.raises(PartialOutputError, match="prepare.json"):
        run(cfg, Layout(root=storage.join(s3.uri, "x")))
    # the CLI takes the URI as it is (--root s3://...), replacing the partial folder with --overwrite
    assert main(["prepare", "--root", storage.join(s3.uri, "x"), "--min_count", "2", "--n_bins", "4",
                 "--tasks", "[t1]", "--engine", "local", "--overwrite", "true"]) == 0
    assert _read(storage.join(s3.uri, "x", "tokens")) == local


@pytest.mark.spark
def test_spark_engine_on_viewfs_equals_local_folders(spark: Any, viewfs: Any, tmp_path: Path) -> None:
    cfg = PrepareConfig(min_count=2, n_bins=4, tasks=["t1"], engine="spark")
    local, remote = _both(cfg, tmp_path, viewfs.uri)
    assert remote == local
    # written through Hadoop's viewfs mount onto its local target
    assert (viewfs.local / "tokens" / "vocab.json").read_text() == local["vocab.json"]
