"""Input discovery and temp-folder cleanup through Hadoop's FileSystem (local, HDFS, S3A, GCS ...)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ehrfm.config.base import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# names searched inside folders (explicitly named files are taken whatever their name)
INPUT_SUFFIXES = (".json", ".ndjson", ".jsonl", ".json.gz", ".ndjson.gz", ".jsonl.gz")


def _hadoop(spark: SparkSession, uri: str) -> tuple[Any, Any]:
    jvm = spark.sparkContext._jvm
    assert jvm is not None
    path = jvm.org.apache.hadoop.fs.Path(uri)
    return path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), path


def expand_inputs(spark: SparkSession, inputs: Sequence[str]) -> list[tuple[str, int]]:
    """Sorted, de-duplicated ``(file URI, length in bytes)`` from files, folders (recursive,
    :data:`INPUT_SUFFIXES`) and globs.

    Raises :class:`~ehrfm.config.base.ConfigError` (a ``ValueError``) naming an input that matches nothing,
    or when no input files are found.
    """
    if isinstance(inputs, str):
        inputs = [inputs]
    found: dict[str, int] = {}
    for item in inputs:
        fs, path = _hadoop(spark, item)
        statuses = fs.globStatus(path)
        if not statuses:
            raise ConfigError(f"input={item!r}: no such file, folder or glob match")
        for st in statuses:
            if st.isFile():
                found[st.getPath().toString()] = int(st.getLen())
                continue
            it = fs.listFiles(st.getPath(), True)
            while it.hasNext():
                f = it.next()
                name = f.getPath().getName()
                if name.lower().endswith(INPUT_SUFFIXES) and not name.startswith((".", "_")):
                    found[f.getPath().toString()] = int(f.getLen())
    if not found:
        raise ConfigError(f"input={list(inputs)}: no FHIR input files ({', '.join(INPUT_SUFFIXES)}) there")
    return sorted(found.items())


def cleanup(spark: SparkSession, uri: str) -> None:
    """Delete ``uri`` recursively (a temporary folder of this job), ignoring its absence."""
    fs, path = _hadoop(spark, uri)
    fs.delete(path, True)
