"""Input discovery and temp-folder cleanup through Hadoop's FileSystem (local, HDFS, S3A, GCS ...).

Local folders are walked here rather than by Hadoop, because Hadoop's local listing follows directory
symlinks blindly: a link to an ancestor is followed until the OS gives up (40 levels), and every file
below it is read again at each level. The walk here resolves real paths, visits each real folder and
reads each real file once, and names every link it did not follow.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ehrfm import storage
from ehrfm.config.base import ConfigError
from ehrfm.ingest.fhir.streams import local_path

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# names searched inside folders (explicitly named files are taken whatever their name)
INPUT_SUFFIXES = (".json", ".ndjson", ".jsonl", ".json.gz", ".ndjson.gz", ".jsonl.gz")


@dataclass
class Inputs:
    """What :func:`expand_inputs` found: ``files`` (sorted ``(URI, bytes)``, each real file once) and
    ``skipped_links`` (``{"path", "target", "reason"}`` per link or path not followed or not read)."""

    files: list[tuple[str, int]] = field(default_factory=list)
    skipped_links: list[dict[str, str]] = field(default_factory=list)


def _hadoop(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def wanted(name: str) -> bool:
    """Whether a file found inside a folder is an input (suffix in :data:`INPUT_SUFFIXES`, not hidden)."""
    return name.lower().endswith(INPUT_SUFFIXES) and not name.startswith((".", "_"))


class LocalWalk:
    """Walk local files and folders once each, by real path, across several inputs."""

    def __init__(self) -> None:
        self.files: dict[str, tuple[str, int]] = {}  # real path -> (path as found, size)
        self.dirs: set[str] = set()  # real paths of the folders walked
        self.skipped: list[dict[str, str]] = []

    def _skip(self, path: str, target: str, reason: str) -> None:
        self.skipped.append({"path": path, "target": target, "reason": reason})

    def add_file(self, path: str) -> None:
        """Take one file (named, or found in a folder) unless its real file was already taken."""
        real = os.path.realpath(path)
        if real in self.files:
            self._skip(path, real, f"same file as {self.files[real][0]}")
            return
        self.files[real] = (path, os.path.getsize(real))

    def add_dir(self, top: str) -> None:
        """Walk a folder (following links to folders not yet walked, never into a cycle)."""
        real = os.path.realpath(top)
        if real in self.dirs:
            self._skip(top, real, "folder already read")
            return
        self.dirs.add(real)
        # depth-first with an explicit stack: (folder as found, real paths of it and the folders above it)
        stack = [(top, frozenset({real}))]
        while stack:
            folder, above = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError as e:
                self._skip(folder, folder, f"unreadable folder: {e.strerror}")
                continue
            below: list[tuple[str, frozenset[str]]] = []
            for entry in entries:
                path = entry.path
                if entry.is_dir(follow_symlinks=True):
                    target = os.path.realpath(path)
                    if target in above:
                        self._skip(path, target, "link cycle: points to a folder above it")
                    elif target in self.dirs:
                        self._skip(path, target, "folder already read")
                    else:
                        self.dirs.add(target)
                        below.append((path, above | {target}))
                elif entry.is_file(follow_symlinks=True):
                    if wanted(entry.name):
                        self.add_file(path)
                elif entry.is_symlink():
                    self._skip(path, os.path.realpath(path), "broken link")
            stack += reversed(below)  # subfolders next, in name order (files first: a real name wins ties)


def expand_inputs(spark: SparkSession, inputs: Sequence[str]) -> Inputs:
    """Sorted ``(file URI, length in bytes)`` from files, folders (recursive, :data:`INPUT_SUFFIXES`)
    and globs, each real file once, plus the links not followed (see :class:`LocalWalk`).

    Raises :class:`~ehrfm.config.base.ConfigError` (a ``ValueError``) naming an input that matches nothing,
    or when no input files are found.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    found: dict[str, int] = {}
    walk = LocalWalk()
    for item in inputs:
        # a local path or file: URI as Hadoop's file:// form (percent-decoded, as every stage reads it; a bare
        # path would resolve against the cluster's default filesystem)
        fs, path = _hadoop(spark, item if storage.is_remote(item) else storage.spark_uri(item))
        statuses = fs.globStatus(path)
        if not statuses:
            raise ConfigError(f"input={item!r}: no such file, folder or glob match")
        for st in statuses:
            uri = st.getPath().toString()
            local = local_path(uri)
            if local is not None:
                (walk.add_file if st.isFile() else walk.add_dir)(local)
            elif st.isFile():
                found[uri] = int(st.getLen())
            else:
                it = fs.listFiles(st.getPath(), True)
                while it.hasNext():
                    f = it.next()
                    if wanted(f.getPath().getName()):
                        found[f.getPath().toString()] = int(f.getLen())
    for path, size in walk.files.values():
        found["file:" + path] = size
    if not found:
        raise ConfigError(f"input={list(inputs)}: no FHIR input files ({', '.join(INPUT_SUFFIXES)}) there")
    return Inputs(sorted(found.items()), walk.skipped)


def cleanup(spark: SparkSession, uri: str) -> None:
    """Delete ``uri`` recursively (a temporary folder of this job), ignoring its absence."""
    fs, path = _hadoop(spark, uri)
    fs.delete(path, True)
