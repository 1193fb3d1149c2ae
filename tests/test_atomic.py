"""ehrfm.atomic: staged outputs published under one marker, leftovers of killed runs, refusal of partial
folders, in-place URI writes, and the reader checks of MEDS and tokens folders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm.atomic import (
    RETIRED_TAG,
    STAGING_TAG,
    IncompleteInputError,
    Outputs,
    PartialOutputError,
    check_meds,
    check_tokens,
    folder_outputs,
    write_marker,
)


def _tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones included) -> its text."""
    return {p.relative_to(root).as_posix(): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}


def _write_folder(folder: str, data: str, marker: str | None = "summary.json") -> None:
    Path(folder, "data").mkdir(parents=True)
    Path(folder, "data", "part-0.txt").write_text(data)
    if marker:
        Path(folder, marker).write_text(json.dumps({"run": data}))


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The id of a process that runs for the test's duration."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def test_folder_published_whole_on_success(tmp_path: Path) -> None:
    final = tmp_path / "meds"
    with folder_outputs(final, "summary.json", key="meds") as staged:
        _write_folder(staged.path(), "new")
        assert not final.exists()  # nothing visible before publish
        staged.publish()
    assert _tree(final) == {"data/part-0.txt": "new", "summary.json": json.dumps({"run": "new"})}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meds"]  # staging and old copy gone


def test_complete_output_replaced_by_rerun(tmp_path: Path) -> None:
    final = tmp_path / "meds"
    _write_folder(str(final), "old")
    (final / "data" / "stale-shard.txt").write_text("x")
    with folder_outputs(final, "summary.json") as staged:
        _write_folder(staged.path(), "new")
        staged.publish()
    assert _tree(final) == {"data/part-0.txt": "new", "summary.json": json.dumps({"run": "new"})}


def test_failure_mid_write_keeps_previous_output(tmp_path: Path) -> None:
    final = tmp_path / "meds"
    _write_folder(str(final), "old")
    before = _tree(final)
    with pytest.raises(RuntimeError, match="boom"), folder_outputs(final, "summary.json") as staged:
        Path(staged.path(), "data").mkdir(parents=True)
        Path(staged.path(), "data", "part-0.txt").write_text("half")
        raise RuntimeError("boom")
    assert _tree(final) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meds"]


def test_publish_without_marker_is_a_bug(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="did not write its completion marker meds/summary.json"), \
            folder_outputs(tmp_path / "meds", "summary.json") as staged:
        _write_folder(staged.path(), "new", marker=None)
        staged.publish()
    assert not (tmp_path / "meds").exists()


def test_leftover_staging_of_a_dead_run_is_cleaned(tmp_path: Path, dead_pid: int) -> None:
    final = tmp_path / "meds"
    _write_folder(str(final), "old")
    leftover = tmp_path / f".meds{STAGING_TAG}{dead_pid}"
    _write_folder(str(leftover / "meds"), "killed", marker=None)
    with folder_outputs(final, "summary.json") as staged:
        assert not leftover.exists()
        _write_folder(staged.path(), "new")
        staged.publish()
    assert _tree(final)["data/part-0.txt"] == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meds"]


def test_live_run_writing_the_same_output_is_refused(tmp_path: Path, live_pid: int) -> None:
    other = tmp_path / f".meds{STAGING_TAG}{live_pid}"
    other.mkdir()
    with pytest.raises(PartialOutputError, match=f"another run \\(process {live_pid}\\)"):
        folder_outputs(tmp_path / "meds", "summary.json").open()
    assert other.exists()  # another run's files are never touched


def test_partial_folder_refused_then_overwritten(tmp_path: Path) -> None:
    final = tmp_path / "meds"
    _write_folder(str(final), "interrupted", marker=None)
    with pytest.raises(PartialOutputError) as err:
        folder_outputs(final, "summary.json", key="meds").open()
    msg = str(err.value)
    assert str(tmp_path) in msg and "meds present" in msg and "meds/summary.json" in msg
    assert "--overwrite" in msg
    assert _tree(final) == {"data/part-0.txt": "interrupted"}  # refused: untouched
    with folder_outputs(final, "summary.json", overwrite=True) as staged:
        _write_folder(staged.path(), "new")
        staged.publish()
    assert _tree(final)["data/part-0.txt"] == "new"


def test_empty_folder_is_not_partial(tmp_path: Path) -> None:
    (tmp_path / "meds").mkdir()
    with folder_outputs(tmp_path / "meds", "summary.json") as staged:
        _write_folder(staged.path(), "new")
        staged.publish()
    assert (tmp_path / "meds" / "summary.json").is_file()


def test_group_outputs_keep_other_files_and_write_marker_last(tmp_path: Path) -> None:
    """A tokens-like folder: this run replaces pretrain/ and tasks/a/, leaves vocab.json and tasks/b/."""
    (tmp_path / "vocab.json").write_text("vocab")
    for rel in ("pretrain", "tasks/a", "tasks/b"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "part-0.parquet").write_text(f"old {rel}")
    (tmp_path / "tokenize.json").write_text("old marker")
    seen: list[bool] = []
    real_replace = os.replace

    def spy(src: str | Path, dst: str | Path) -> None:
        seen.append((tmp_path / "tokenize.json").exists())
        real_replace(src, dst)

    with Outputs(tmp_path, ["pretrain", "tasks/a"], "tokenize.json", key="tokens") as staged:
        for rel in ("pretrain", "tasks/a"):
            Path(staged.path(rel)).mkdir(parents=True)
            Path(staged.path(rel), "part-0.parquet").write_text(f"new {rel}")
        assert Path(staged.staging).name == f".tokenize{STAGING_TAG}{os.getpid()}"
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("ehrfm.atomic.os.replace", spy)
            staged.publish("new marker")
    # the marker was gone during every rename but the last one, which put it in place
    assert seen[-1] is False and not any(seen[1:-1])
    assert _tree(tmp_path) == {"vocab.json": "vocab", "tokenize.json": "new marker",
                               "pretrain/part-0.parquet": "new pretrain",
                               "tasks/a/part-0.parquet": "new tasks/a",
                               "tasks/b/part-0.parquet": "old tasks/b"}


def test_killed_inside_publish_reads_partial_and_restores_moved_output(tmp_path: Path, dead_pid: int) -> None:
    """A run killed between moving the old output aside and renaming the new one in: the marker is already
    gone (partial, refused) and the old output is moved back by the next run."""
    (tmp_path / "vocab.json").write_text("new vocab")  # renamed in before the kill
    retired = tmp_path / f".prepare{RETIRED_TAG}{dead_pid}"
    retired.mkdir()
    (retired / "bins.json").write_text("old bins")  # moved aside, its place still empty
    outputs = Outputs(tmp_path, ["vocab.json", "bins.json"], "prepare.json", key="tokens")
    with pytest.raises(PartialOutputError, match="vocab.json, bins.json present but prepare.json"):
        outputs.open()
    assert _tree(tmp_path) == {"vocab.json": "new vocab", "bins.json": "old bins"}


def test_write_marker_replaces_whole(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    path.write_text("old")
    write_marker(path, {"events": 3})
    assert json.loads(path.read_text()) == {"events": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_uri_outputs_written_in_place_marker_last(tmp_path: Path) -> None:
    final = tmp_path / "meds"
    _write_folder(str(final), "old")
    uri = final.as_uri()
    staged = folder_outputs(uri, "summary.json", key="meds")
    staged.open()
    assert staged.path() == uri
    assert not (final / "summary.json").exists()  # removed first
    (final / "data" / "part-0.txt").write_text("new")
    with pytest.raises(RuntimeError, match="did not write its completion marker"):
        staged.publish()
    staged.publish({"run": "new"})
    assert json.loads((final / "summary.json").read_text()) == {"run": "new"}
    # an interrupted in-place write (data, no marker) is refused next time, unless overwrite
    (final / "summary.json").unlink()
    with pytest.raises(PartialOutputError, match="present but summary.json"):
        folder_outputs(uri, "summary.json").open()
    folder_outputs(uri, "summary.json", overwrite=True).open()


# --- reader checks ------------------------------------------------------------------------------------------
def _events(path: Path, columns: tuple[str, ...] = ("subject_id", "time", "code")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({c: pa.array([1], pa.int64()) for c in columns}), path)


def test_check_meds_names_what_is_missing(tmp_path: Path) -> None:
    meds = tmp_path / "meds"
    with pytest.raises(IncompleteInputError, match="no data/ folder"):
        check_meds(meds)
    (meds / "data").mkdir(parents=True)
    with pytest.raises(IncompleteInputError, match="data/ holds no event files"):
        check_meds(meds)
    _events(meds / "data" / "part-0.parquet", ("subject_id", "time"))
    with pytest.raises(IncompleteInputError,
                       match=r"part-0.parquet: MEDS event file without column\(s\) \['code'\]"):
        check_meds(meds)
    _events(meds / "data" / "part-0.parquet")
    assert check_meds(meds) == [str(meds / "data" / "part-0.parquet")]  # other tools: no marker needed
    with pytest.raises(IncompleteInputError, match=r"\['numeric_value'\]"):
        check_meds(meds, ("subject_id", "numeric_value"))


def test_check_meds_accepts_split_folders_and_skips_hidden(tmp_path: Path) -> None:
    meds = tmp_path / "meds"
    _events(meds / "data" / "train" / "0.parquet")
    _events(meds / "data" / "held_out" / "0.parquet")
    (meds / "data" / "_temporary").mkdir()
    (meds / "data" / "_temporary" / "x.parquet").write_text("not parquet")
    data = meds / "data"
    assert check_meds(meds) == [str(data / "held_out" / "0.parquet"), str(data / "train" / "0.parquet")]


def test_check_meds_catches_an_interrupted_ehrfm_write(tmp_path: Path) -> None:
    """The measured failure: an empty data/ beside the previous run's summary.json."""
    meds = tmp_path / "meds"
    (meds / "data").mkdir(parents=True)
    (meds / "summary.json").write_text(json.dumps({"shards": [{"file": "part-00000.parquet", "rows": 5}]}))
    with pytest.raises(IncompleteInputError, match="summary.json lists 1 event file.*part-00000.parquet"):
        check_meds(meds)
    (meds / "summary.json").unlink()
    (meds / "metadata").mkdir()
    (meds / "metadata" / "dataset.json").write_text(json.dumps({"etl_name": "ehrfm.ingest.fhir"}))
    _events(meds / "data" / "part-00000.parquet")
    with pytest.raises(IncompleteInputError, match="no summary.json"):
        check_meds(meds)
    (meds / "metadata" / "dataset.json").write_text(json.dumps({"etl_name": "MEDS_transforms"}))
    assert len(check_meds(meds)) == 1


def test_check_meds_follows_shards_listed_in_split_folders(tmp_path: Path) -> None:
    """summary.json of ehrfm ingest lists data/<split>/<n>.parquet paths: each must be there."""
    meds = tmp_path / "meds"
    listed = ["train/0.parquet", "train/1.parquet", "held_out/0.parquet"]
    (meds / "data").mkdir(parents=True)
    (meds / "summary.json").write_text(json.dumps({"shards": [{"file": f, "rows": 1} for f in listed]}))
    for f in listed[:2]:
        _events(meds / "data" / f)
    with pytest.raises(IncompleteInputError, match=r"lists 1 event file.*first: held_out/0.parquet"):
        check_meds(meds)
    _events(meds / "data" / "held_out" / "0.parquet")
    assert check_meds(meds) == [str(meds / "data" / f) for f in ("held_out/0.parquet", *listed[:2])]


def test_check_tokens(tmp_path: Path) -> None:
    with pytest.raises(IncompleteInputError, match="no tokenize.json"):
        check_tokens(tmp_path)
    (tmp_path / "tokenize.json").write_text("{}")
    with pytest.raises(IncompleteInputError, match="no token rows in tasks/x/"):
        check_tokens(tmp_path, ["tasks/x"])
    _events(tmp_path / "pretrain" / "part-0.parquet", ("subject_id", "length"))
    with pytest.raises(IncompleteInputError, match=r"\['concept_ids'\]"):
        check_tokens(tmp_path)
    _events(tmp_path / "pretrain" / "part-0.parquet", ("subject_id", "length", "concept_ids"))
    assert check_tokens(tmp_path) == {"pretrain": [str(tmp_path / "pretrain" / "part-0.parquet")]}
