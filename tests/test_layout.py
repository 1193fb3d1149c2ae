"""Layout: every local path it gives is absolute, so Spark executors (whose working folder is their own) write
where the driver reads; URIs keep their scheme."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrfm.layout import Layout


def test_relative_roots_and_overrides_become_absolute(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    layout = Layout(root="out", labels="elsewhere/labels")
    assert layout.root_dir == tmp_path / "out"
    meds = tmp_path / "out" / "meds"
    assert layout.meds_paths.subject_splits == meds / "metadata" / "subject_splits.parquet"
    assert layout.labels_dir == tmp_path / "elsewhere" / "labels"
    assert layout.meds_uri == str(tmp_path / "out" / "meds")
    assert layout.tracking_uri() == f"sqlite:///{tmp_path / 'out' / 'mlflow.db'}"
    assert Layout.from_dict(layout.to_dict()) == layout  # the config itself keeps what the user wrote
    assert layout.root == "out"


def test_uris_keep_their_scheme() -> None:
    assert Layout(root="hdfs:///pipe").meds_uri == "hdfs:///pipe/meds"
