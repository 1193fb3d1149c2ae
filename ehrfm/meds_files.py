"""The event files of a MEDS dataset, in either layout, for every reader.

ehrfm writes ``data/<split>/<n>.parquet`` (the MEDS-Transforms convention that MEDS-Tab expects); older
ehrfm versions and other tools write ``data/*.parquet`` (flat). Readers go through this module so that both
work everywhere:

- :func:`data_files` / :func:`meds_data_files`: the parquet files under ``data/``, recursively, sorted,
  skipping hidden and ``_``-prefixed names (Spark's ``_temporary``, a writer's ``_shard-*`` files) as Spark
  and pyarrow do; local paths or URIs (``s3://``, ``hdfs://``, through pyarrow's filesystems);
- :func:`read_meds_table`: those files as one Arrow table (pyarrow dataset: column projection and filter push
  down to the files);
- :func:`read_meds_spark`: the same files as a Spark DataFrame. A plain ``spark.read.parquet("<meds>/data")``
  fails on the split layout (``UNABLE_TO_INFER_SCHEMA``: Spark looks for ``key=value`` partition folders);
  ``recursiveFileLookup`` reads both layouts, lists in the JVM (fast for many files, any Hadoop filesystem)
  and skips the same hidden names.

Light on purpose (no Spark, torch or pandas import at module level): ``ehrfm.atomic`` uses it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ehrfm.layout import MEDS_DATA

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession

_DIGITS = re.compile(r"(\d+)")


def _hidden(name: str) -> bool:
    return name.startswith((".", "_"))


def _natural_key(path: str) -> list[Any]:
    """Sort key that orders ``train/2.parquet`` before ``train/10.parquet``: digit runs compare as numbers."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in _DIGITS.split(path) if p]


def data_files(folder: str | Path) -> list[str]:
    """Parquet files under ``folder`` (recursively), in natural order, skipping hidden and ``_``-prefixed
    files and folders; none when ``folder`` is absent. ``folder`` may be a URI (then the files are URIs)."""
    text = str(folder).rstrip("/")
    if "://" in text:
        return _uri_files(text)
    out = []
    for dirpath, dirnames, filenames in os.walk(text):
        dirnames[:] = [d for d in dirnames if not _hidden(d)]
        out += [os.path.join(dirpath, f) for f in filenames if f.endswith(".parquet") and not _hidden(f)]
    return sorted(out, key=lambda p: _natural_key(os.path.relpath(p, text)))


def _uri_files(uri: str) -> list[str]:
    import pyarrow.fs as pafs

    from ehrfm.storage import filesystem

    fs, base = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(base, allow_not_found=True, recursive=True))
    rels = []
    for info in infos:
        rel = info.path[len(base):].lstrip("/")
        parts = rel.split("/")
        if info.type == pafs.FileType.File and rel.endswith(".parquet") and not any(map(_hidden, parts)):
            rels.append(rel)
    return [f"{uri}/{rel}" for rel in sorted(rels, key=_natural_key)]


def meds_data_files(root: str | Path) -> list[str]:
    """Event files of the MEDS dataset at ``root``: ``data/<split>/<n>.parquet`` or flat ``data/*.parquet``
    (see :func:`data_files`)."""
    return data_files(f"{str(root).rstrip('/')}/{MEDS_DATA}")


def _require(root: str | Path) -> list[str]:
    files = meds_data_files(root)
    if not files:
        raise FileNotFoundError(f"meds={str(root)!r}: no event files under {MEDS_DATA}/ (expected "
                                f"{MEDS_DATA}/<split>/<n>.parquet or {MEDS_DATA}/*.parquet; run "
                                "`ehrfm ingest`)")
    return files


def read_meds_table(root: str | Path, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
    """The events of the MEDS dataset at ``root`` (either layout) as one Arrow table: ``columns`` (default
    all) of the rows matching ``filter`` (a ``pyarrow.dataset`` expression). Raises ``FileNotFoundError``
    when there are no event files."""
    import pyarrow.dataset as ds

    files = _require(root)
    if "://" in str(root):
        from ehrfm.storage import filesystem

        fs, _ = filesystem(files[0])
        dset = ds.dataset([filesystem(f)[1] for f in files], format="parquet", filesystem=fs)
    else:
        dset = ds.dataset(files, format="parquet")
    return dset.to_table(columns=columns, filter=filter)


def read_meds_spark(spark: SparkSession, root: str | Path) -> DataFrame:
    """The events of the MEDS dataset at ``root`` (either layout, local path or URI) as a Spark DataFrame."""
    from ehrfm.storage import spark_uri

    data = spark_uri(f"{str(root).rstrip('/')}/{MEDS_DATA}")
    _require(root)  # a named error instead of Spark's schema-inference failure
    return (spark.read.option("recursiveFileLookup", "true").option("pathGlobFilter", "*.parquet")
            .parquet(data))
