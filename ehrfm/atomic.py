"""Atomic, resumable stage outputs, and the checks readers run on a folder before using it.

A stage that writes folders or files (``ehrfm ingest`` the MEDS folder, ``ehrfm prepare`` ``vocab.json`` and
``bins.json``, ``ehrfm tokenize`` ``pretrain/`` and ``tasks/<task>/``, ``ehrfm score`` the scores folder)
opens an :class:`Outputs`: it writes everything under a hidden staging folder beside the outputs
(``<root>/.<tag>.ehrfm-staging-<pid>/``, mirroring their relative paths), then :meth:`Outputs.publish`
removes the stage's completion marker, renames each staged output into place and writes the marker last
(temporary file + ``os.replace``). So a reader never sees a new half next to an old marker:

- killed while writing (the long part): the previous output is untouched, marker included; the next run
  deletes the staging folder of the dead process and starts again;
- killed inside ``publish`` (renames only): the marker is gone, so the folder reads as partial; an output
  moved aside (``.<tag>.ehrfm-old-<pid>/``) whose place is still empty is moved back by the next run;
- an output present without its marker (an interrupted older run, or a folder some other tool wrote) is
  refused with :class:`PartialOutputError`, naming the folder and the missing marker, unless ``overwrite``;
- a complete output (marker present) is replaced by a rerun, as before.

Paths with a scheme (``hdfs://``, ``s3a://``, ``viewfs://``, ``file://``) are written in place (no rename: S3
has none) through :func:`ehrfm.storage.filesystem` (Hadoop's FileSystem in Spark's JVM when a Spark session
runs, pyarrow otherwise): the marker is deleted first and written last, so an interrupted write is a folder
without its marker, refused by the next run unless ``overwrite``.

The staging folders are hidden (a leading dot), so Spark and pyarrow readers of the parent folder skip them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from ehrfm.config.base import ConfigBase, ConfigError

STAGING_TAG = ".ehrfm-staging-"
RETIRED_TAG = ".ehrfm-old-"


@dataclass
class OverwriteOption(ConfigBase):
    """The one setting of this module, mixed into the config of every stage that writes through it."""

    overwrite: bool = False
    """Replace an output that lacks its completion marker (an interrupted run, or files another tool wrote;
    docs/CONVENTIONS.md lists each stage's marker); without it such an output is refused. A complete
    earlier output is always replaced."""


class PartialOutputError(ConfigError):
    """An output folder holds data but not its completion marker (an interrupted run or another tool's
    files); the stage refuses to replace it unless ``overwrite`` is set."""


class IncompleteInputError(FileNotFoundError):
    """A folder a stage reads lacks its completion marker, a file, or a column it needs."""


def is_uri(target: str | Path) -> bool:
    """True for a path with a scheme (``hdfs://``, ``s3a://``, ``file://``): written in place, not renamed."""
    return "://" in str(target)


def write_marker(path: str | Path, content: str | dict[str, Any]) -> Path:
    """Write ``path`` atomically: a temporary file beside it, flushed to disk, then ``os.replace``.

    ``content`` is text or a JSON object (indented). Returns the path. Readers see the old file or the new
    one, never a half-written one.
    """
    path = Path(path)
    text = content if isinstance(content, str) else json.dumps(content, indent=1, default=str)
    tmp = path.with_name(f".{path.name}{STAGING_TAG}{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    # makes renames durable across a power loss (a kill alone does not need it); not every OS allows it
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    """Delete a file, link or folder tree; nothing when absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _has_content(path: Path) -> bool:
    """A file, or a folder with anything in it (an empty folder holds nothing to lose)."""
    if path.is_dir():
        return any(path.iterdir())
    return path.exists()


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


class Outputs:
    """The outputs of one stage run under ``root``: staged, then published together under one marker.

    ``outputs``: paths relative to ``root`` (files or folders) this run replaces; ``marker``: the completion
    marker, relative to ``root``, either beside them (``tokenize.json``) or inside one of them
    (``summary.json`` of a MEDS folder, which the stage writes last into the staged folder). ``key`` names
    the setting the outputs belong to in messages (``meds``, ``tokens``, ``scores``). Use as a context
    manager: entering checks and cleans, :meth:`path` gives where to write, :meth:`publish` makes it
    visible; an exception discards the staging folder and leaves the previous output as it was.
    """

    def __init__(self, root: str | Path, outputs: Sequence[str], marker: str, *, overwrite: bool = False,
                 key: str = "output", tag: str | None = None) -> None:
        if not outputs:
            raise ValueError("Outputs: no outputs named")
        self.uri = is_uri(root)
        self.root = str(root).rstrip("/") if self.uri else Path(root).absolute()
        self.outputs = [o.strip("/") for o in outputs]
        self.marker = marker.strip("/")
        self.overwrite = overwrite
        self.key = key
        self.tag = tag or Path(self.marker).name.split(".")[0] or "output"
        self.inner = next((o for o in self.outputs if self.marker.startswith(o + "/")), None)
        self.published = False

    # --- names -------------------------------------------------------------------------------------------
    @property
    def staging(self) -> Path:
        """This process's staging folder (``<root>/.<tag>.ehrfm-staging-<pid>``)."""
        assert isinstance(self.root, Path)
        return self.root / f".{self.tag}{STAGING_TAG}{os.getpid()}"

    def _retired(self, pid: int) -> Path:
        assert isinstance(self.root, Path)
        return self.root / f".{self.tag}{RETIRED_TAG}{pid}"

    def final(self, rel: str) -> Path:
        """The published place of ``rel`` (local roots only)."""
        assert isinstance(self.root, Path)
        return self.root / rel

    def path(self, rel: str | None = None) -> str:
        """Where to write the output ``rel`` (default: the first) now: inside the staging folder (local), or
        in place (URI)."""
        rel = self.outputs[0] if rel is None else rel
        if self.uri:
            return self._uri(rel)
        return str(self.staging / rel)

    def _uri(self, rel: str) -> str:
        assert isinstance(self.root, str)
        return self.root if rel == "." else f"{self.root}/{rel}"

    # --- life cycle --------------------------------------------------------------------------------------
    def __enter__(self) -> Outputs:
        self.open()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is not None or not self.published:
            self.discard()

    def open(self) -> None:
        """Clean what killed runs left, refuse a partial output (unless ``overwrite``), start staging."""
        if self.uri:
            self._open_uri()
            return
        self.clean_leftovers()
        self._refuse_partial()
        _remove(self.staging)
        self.staging.mkdir(parents=True)

    def clean_leftovers(self) -> list[Path]:
        """Delete the staging folders of runs that are no longer alive, move back outputs a run killed
        inside :meth:`publish` had moved aside (when their place is still empty); returns what was
        removed. A live run's staging folder means another run writes the same outputs: refused."""
        assert isinstance(self.root, Path)
        if not self.root.is_dir():
            return []
        removed = []
        for entry in sorted(self.root.iterdir()):
            for tag in (STAGING_TAG, RETIRED_TAG):
                prefix = f".{self.tag}{tag}"
                if not entry.name.startswith(prefix) or not entry.name[len(prefix):].isdigit():
                    continue
                pid = int(entry.name[len(prefix):])
                if pid != os.getpid() and _pid_alive(pid):
                    raise PartialOutputError(
                        f"{self.key}={str(self.root)!r}: another run (process {pid}) is writing here "
                        f"({entry.name}); wait for it, or delete that folder if no such run exists")
                if tag == RETIRED_TAG:
                    self._restore(entry)
                _remove(entry)
                removed.append(entry)
        return removed

    def _restore(self, retired: Path) -> None:
        for rel in self.outputs:
            old, place = retired / rel, self.final(rel)
            if (old.exists() or old.is_symlink()) and not _has_content(place):
                _remove(place)
                place.parent.mkdir(parents=True, exist_ok=True)
                os.replace(old, place)

    def _refuse_partial(self) -> None:
        if self.overwrite or self.final(self.marker).exists():
            return
        present = [rel for rel in self.outputs if _has_content(self.final(rel))]
        if present:
            raise PartialOutputError(
                f"{self.key}={str(self.root)!r}: {', '.join(present)} present but {self.marker} (the "
                "completion marker, written last) is missing: an interrupted run or files another tool "
                "wrote; rerun with --overwrite true to replace it")

    def publish(self, marker: str | dict[str, Any] | None = None) -> None:
        """Make the staged outputs visible: remove the old marker, rename each staged output into place
        (the previous one moved aside, then deleted), write the marker last.

        ``marker``: its content (text or JSON object), or None when the stage wrote it itself into a staged
        output (a MEDS folder's ``summary.json``).
        """
        if self.uri:
            self._publish_uri(marker)
            return
        staged_marker = self.staging / self.marker
        if marker is None and not staged_marker.is_file():
            raise RuntimeError(f"{self.key}: the stage did not write its completion marker {self.marker}")
        missing = [rel for rel in self.outputs if not (self.staging / rel).exists()]
        if missing:
            raise RuntimeError(f"{self.key}: the stage did not write {', '.join(missing)}")
        if marker is not None:
            # written into staging first: the publish below is then renames only
            staged_marker.parent.mkdir(parents=True, exist_ok=True)
            write_marker(staged_marker, marker)
        final_marker = self.final(self.marker)
        with contextlib.suppress(FileNotFoundError):
            final_marker.unlink()  # first: from here on a reader sees "incomplete", never old + new mixed
        _fsync_dir(final_marker.parent)
        retired = self._retired(os.getpid())
        for rel in self.outputs:
            place = self.final(rel)
            if place.exists() or place.is_symlink():
                (retired / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(place, retired / rel)
            place.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.staging / rel, place)
        if self.inner is None:
            os.replace(staged_marker, final_marker)  # last
        _fsync_dir(final_marker.parent)
        self.published = True
        _remove(retired)
        _remove(self.staging)

    def discard(self) -> None:
        """Delete the staging folder (a failed run leaves the previous output as it was)."""
        if not self.uri:
            _remove(self.staging)

    # --- URIs: in place, marker first out and last in -----------------------------------------------------
    def _fs(self) -> tuple[Any, str]:
        from ehrfm.storage import filesystem

        assert isinstance(self.root, str)
        return filesystem(self.root)

    def _open_uri(self) -> None:
        import pyarrow.fs as pafs

        fs, base = self._fs()
        if fs.get_file_info(f"{base}/{self.marker}").type == pafs.FileType.File:
            fs.delete_file(f"{base}/{self.marker}")  # first: an interrupted write then reads as partial
            return
        if self.overwrite:
            return

        def has_content(path: str) -> bool:
            kind = fs.get_file_info(path).type
            if kind == pafs.FileType.Directory:
                return bool(fs.get_file_info(pafs.FileSelector(path)))
            return bool(kind == pafs.FileType.File)

        present = [rel for rel in self.outputs if has_content(base if rel == "." else f"{base}/{rel}")]
        if present:
            raise PartialOutputError(
                f"{self.key}={self.root!r}: {', '.join(present)} present but {self.marker} (the completion "
                "marker, written last) is missing; rerun with --overwrite true to replace it")

    def _publish_uri(self, marker: str | dict[str, Any] | None) -> None:
        import pyarrow.fs as pafs

        fs, base = self._fs()
        if marker is not None:
            text = marker if isinstance(marker, str) else json.dumps(marker, indent=1, default=str)
            with fs.open_output_stream(f"{base}/{self.marker}") as f:
                f.write(text.encode())
        if fs.get_file_info(f"{base}/{self.marker}").type != pafs.FileType.File:
            raise RuntimeError(f"{self.key}: the stage did not write its completion marker {self.marker}")
        self.published = True


def folder_outputs(final: str | Path, marker: str, *, overwrite: bool = False,
                   key: str = "output") -> Outputs:
    """:class:`Outputs` for one whole folder whose completion marker lies inside it (a MEDS folder and its
    ``summary.json``): staged as ``<parent>/.<name>.ehrfm-staging-<pid>/<name>/`` (local), in place (URI)."""
    if is_uri(final):
        return Outputs(str(final).rstrip("/"), ["."], marker, overwrite=overwrite, key=key)
    final = Path(final).absolute()
    return Outputs(final.parent, [final.name], f"{final.name}/{marker}", overwrite=overwrite, key=key,
                   tag=final.name)


# --- readers -----------------------------------------------------------------------------------------------
def parquet_files(folder: str | Path) -> list[str]:
    """Parquet files under ``folder`` (recursively: flat ``data/*.parquet`` and ``data/<split>/<n>.parquet``),
    skipping hidden and ``_``-prefixed names as Spark and pyarrow do (:func:`ehrfm.meds_files.data_files`);
    local paths or URIs."""
    from ehrfm.meds_files import data_files

    return data_files(folder)


def check_columns(files: Iterable[str | Path], columns: Sequence[str], what: str) -> None:
    """Raise :class:`IncompleteInputError` naming the first file (and ``what`` it is) that lacks one of
    ``columns`` (read from the parquet footers only; local paths or URIs)."""
    import pyarrow.parquet as pq

    from ehrfm.storage import filesystem

    for f in files:
        fs, path = filesystem(str(f))
        names = set(pq.read_schema(path, filesystem=fs).names)
        missing = [c for c in columns if c not in names]
        if missing:
            raise IncompleteInputError(f"{f}: {what} without column(s) {missing} (has {sorted(names)})")


def check_meds(root: str | Path, columns: Sequence[str] = ("subject_id", "time", "code"), *,
               key: str = "meds") -> list[str]:
    """Check a MEDS folder (local path or URI) before reading it; returns its event files.

    Refuses (:class:`IncompleteInputError`, naming the folder and what is missing) a missing ``data/``,
    ``data/`` without parquet files, an event file without one of ``columns``, a folder ehrfm began writing
    (``metadata/dataset.json`` with an ``ehrfm`` ETL) without its ``summary.json``, and a ``summary.json``
    whose shards are not in ``data/``. Folders other tools wrote (no ``summary.json``) need only the
    data and columns.
    """
    from ehrfm import storage
    from ehrfm.layout import MEDS_DATA, MEDS_DATASET_JSON, MEDS_SUMMARY

    base = storage.normalize(str(root))
    where = f"{key}={base!r}"
    data = storage.join(base, MEDS_DATA)
    if not storage.is_dir(data):
        raise IncompleteInputError(f"{where}: no data/ folder (expected an ingested MEDS dataset; run "
                                   "`ehrfm ingest`)")
    if storage.is_file(storage.join(base, MEDS_SUMMARY)):
        summary = storage.read_json(storage.join(base, MEDS_SUMMARY))
        listed = [s.get("file") for s in summary.get("shards", []) if isinstance(s, dict)]
        lost = [f for f in listed if isinstance(f, str) and not storage.is_file(storage.join(data, f))]
        if lost:
            raise IncompleteInputError(f"{where}: summary.json lists {len(lost)} event file(s) not in data/ "
                                       f"(first: {lost[0]}); rerun `ehrfm ingest`")
    elif storage.is_file(storage.join(base, MEDS_DATASET_JSON)):
        etl = str(storage.read_json(storage.join(base, MEDS_DATASET_JSON)).get("etl_name", ""))
        if etl.startswith("ehrfm"):
            raise IncompleteInputError(f"{where}: no summary.json (the completion marker ehrfm ingest writes "
                                       "last): an interrupted ingest; rerun `ehrfm ingest --overwrite true`")
    files = parquet_files(data)
    if not files:
        raise IncompleteInputError(f"{where}: data/ holds no event files (*.parquet)")
    check_columns(files, columns, "MEDS event file")
    return files


def check_tokens(root: str | Path, folders: Sequence[str] = ("pretrain",), *,
                 columns: Sequence[str] = ("subject_id", "length", "concept_ids"),
                 key: str = "tokens") -> dict[str, list[str]]:
    """Check a tokens folder (local path or URI) before reading token rows from ``folders`` (``pretrain``,
    ``tasks/<task>``); returns their parquet files by folder.

    Refuses (:class:`IncompleteInputError`) a folder without ``tokenize.json`` (the marker ``ehrfm tokenize``
    writes last), a missing or empty row folder, and row files without one of ``columns``.
    """
    from ehrfm import storage
    from ehrfm.layout import TOKENS_META

    base = storage.normalize(str(root))
    where = f"{key}={base!r}"
    if not storage.is_file(storage.join(base, TOKENS_META)):
        raise IncompleteInputError(f"{where}: no {TOKENS_META} (the completion marker `ehrfm tokenize` "
                                   "writes last): never tokenized, or interrupted; run `ehrfm tokenize`")
    out = {}
    for rel in folders:
        files = parquet_files(storage.join(base, rel))
        if not files:
            raise IncompleteInputError(f"{where}: no token rows in {rel}/ (run `ehrfm tokenize` with them)")
        check_columns(files, columns, "token row file")
        out[rel] = files
    return out
