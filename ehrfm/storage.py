"""Where stage inputs and outputs live: local paths and Hadoop-compatible URIs behind one filesystem API.

Every folder option of a stage (``--root --meds --labels --tokens --scores``) takes a local path, a ``file:``
URI, or a URI of a distributed filesystem (``hdfs://``, ``s3a://``, ``s3://``, ``viewfs://``, ``abfs://``,
``gs://`` ...). Data moves through the engines' own readers and writers (Spark's Hadoop FileSystem on a
cluster, pyarrow / polars in the local engines); the small files a driver writes itself (``vocab.json``,
summaries, completion markers, renames of finished shards) go through :func:`filesystem`, which answers a
``pyarrow.fs.FileSystem`` and the path inside it:

- a local path or ``file:`` URI: the local filesystem (relative paths resolved on the driver);
- with a Spark session running in this process (the Spark engines, spark-submit), every scheme except
  ``s3://`` / ``gs://`` / ``gcs://`` goes through **Hadoop's FileSystem in Spark's JVM**
  (:class:`ehrfm.hadoop_fs.HadoopHandler`): exactly the filesystems, credentials and mount tables (``fs.*``
  in core-site.xml, ``--conf spark.hadoop.fs.*``) the cluster's executors use, so whatever the cluster's
  Hadoop config serves works;
- otherwise (local engines, no JVM): pyarrow's own filesystems, ``s3a://`` read as ``s3://`` (credentials and
  endpoint from the usual AWS sources, e.g. ``AWS_ENDPOINT_URL``), ``hdfs://`` through libhdfs. A scheme only
  Hadoop serves (``viewfs://``) is refused with a message naming the URI and the Spark engine.

:func:`spark_uri` gives the form Spark's readers and writers take (``s3://`` -> ``s3a://``: Hadoop has no
``s3`` connector by default). Light on purpose: pyarrow is imported inside functions, pyspark never
(a Spark session is looked up only when pyspark is already imported).
"""

from __future__ import annotations

import json
import os
import sys
from typing import TYPE_CHECKING, Any

from ehrfm.config.base import ConfigError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

# schemes served by pyarrow itself even when a Spark session runs (Hadoop has no connector by these names)
ARROW_SCHEMES = ("s3", "gs", "gcs")


def scheme(location: str) -> str | None:
    """The URI scheme of ``location`` in lower case (``file`` for ``file:/x``), None for a plain path."""
    text = str(location)
    if text.startswith("file:"):
        return "file"
    head, sep, _ = text.partition("://")
    return head.lower() if sep and head.replace("+", "").replace("-", "").isalnum() else None


def is_remote(location: str) -> bool:
    """True for a URI that is not on the local filesystem (``hdfs://``, ``s3a://``, ``viewfs://`` ...)."""
    return scheme(location) not in (None, "file")


def local_path(location: str) -> str:
    """A local path or ``file:`` URI as an absolute local path (relative paths from the driver's current
    folder); raises :class:`ConfigError` for a remote URI."""
    if is_remote(location):
        raise ConfigError(f"{location!r}: not a local path")
    if str(location).startswith("file:"):
        from urllib.parse import unquote, urlparse

        return os.path.abspath(unquote(urlparse(str(location)).path))
    return os.path.abspath(location)


def normalize(location: str) -> str:
    """A folder option as the string every stage passes on: remote URIs as given (trailing ``/`` dropped),
    local paths and ``file:`` URIs as absolute local paths (Spark executors run in their own folders)."""
    return str(location).rstrip("/") if is_remote(location) else local_path(location)


def join(base: str, *parts: str) -> str:
    """``base/part/...`` for a local path or URI (``os.path.join`` would keep a URI, ``Path`` collapses
    ``//``)."""
    out = str(base).rstrip("/")
    for p in parts:
        p = str(p).strip("/")
        if p and p != ".":
            out = f"{out}/{p}"
    return out


def name(location: str) -> str:
    """The last component of a local path or URI."""
    return str(location).rstrip("/").rsplit("/", 1)[-1]


def parent(location: str) -> str:
    """The folder holding ``location`` (a local path or URI)."""
    return str(location).rstrip("/").rsplit("/", 1)[0]


def spark_uri(location: str) -> str:
    """``location`` as Spark's readers and writers take it: ``s3://`` as ``s3a://`` (Hadoop's connector), a
    local path or ``file:`` URI as ``file://<absolute path>`` (a bare path would resolve against the cluster's
    default filesystem, e.g. HDFS, while the driver's own reads and writes of it are local: one meaning for
    both), other URIs unchanged. Not percent-encoded: Hadoop's ``Path`` takes the characters as they are."""
    text = str(location)
    kind = scheme(text)
    if kind == "s3":
        return "s3a://" + text[len("s3://"):]
    if kind in (None, "file"):
        return "file://" + local_path(text)
    return text


def active_spark() -> Any:
    """The Spark session running in this process, or None (never imports pyspark in a process without
    one: local engines stay JVM-free). A spark-submit driver (``$PYSPARK_GATEWAY_PORT``) always has one: its
    session is attached (with the submitted configuration) on first use, so a job may touch its folders
    before it asks for the session itself."""
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        from ehrfm.spark import get_spark

        return get_spark()
    if "pyspark.sql" not in sys.modules:
        return None
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it for a local path or URI (the rules in the module
    docstring). Paths inside a Hadoop filesystem are the URIs themselves; join children with :func:`join`."""
    import pyarrow.fs as pafs

    kind = scheme(location)
    if kind in (None, "file"):
        return pafs.LocalFileSystem(), local_path(location)
    uri = str(location).rstrip("/") or str(location)
    spark = active_spark() if kind not in ARROW_SCHEMES else None
    if spark is not None:
        return hadoop_filesystem(spark), uri
    try:
        fs, path = pafs.FileSystem.from_uri("s3://" + uri[len("s3a://"):] if kind == "s3a" else uri)
    except (pa_errors() + (OSError,)) as e:
        raise ConfigError(f"{location!r}: no filesystem for {kind}:// in this process ({e}); a scheme that "
                          "only Hadoop serves (viewfs://, wasb://, ...) needs the Spark engine "
                          "(--engine spark, or spark-submit), whose Hadoop FileSystem is used") from e
    return fs, path


def pa_errors() -> tuple[type[BaseException], ...]:
    """pyarrow's error for an unknown or unusable filesystem scheme."""
    import pyarrow as pa

    return (pa.ArrowInvalid, pa.ArrowNotImplementedError)


# --- small files the driver reads and writes --------------------------------------------------------------
def exists(location: str) -> bool:
    """Whether a file or folder is at ``location``."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return bool(fs.get_file_info(path).type != pafs.FileType.NotFound)


def is_file(location: str) -> bool:
    """Whether a file is at ``location``."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return bool(fs.get_file_info(path).type == pafs.FileType.File)


def is_dir(location: str) -> bool:
    """Whether a folder is at ``location``."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    return bool(fs.get_file_info(path).type == pafs.FileType.Directory)


def list_names(location: str) -> list[str]:
    """Names of the entries of the folder ``location``, sorted (none when it is absent)."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(name(i.path) for i in infos)


def read_bytes(location: str) -> bytes:
    """The content of the file at ``location``."""
    fs, path = filesystem(location)
    with fs.open_input_stream(path) as f:
        return bytes(f.read())


def read_text(location: str) -> str:
    """The text (UTF-8) of the file at ``location``."""
    return read_bytes(location).decode("utf-8")


def read_json(location: str) -> Any:
    """The JSON document at ``location``."""
    return json.loads(read_text(location))


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file (its folder created when missing). Local: a temporary file beside it, flushed, then
    renamed (readers see the old file or the new one); remote: one create-and-close (S3 and HDFS publish a
    file when it is closed). Text only locally (UTF-8), as every caller writes."""
    if not is_remote(location):
        from ehrfm.atomic import write_marker

        path = local_path(location)
        os.makedirs(os.path.dirname(path), exist_ok=True)  # as object stores and Hadoop's create do
        write_marker(path, data.decode("utf-8"))
        return
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_text(location: str, text: str | dict[str, Any] | list[Any]) -> None:
    """Write text, or a JSON object / list (indented), to ``location`` (see :func:`write_bytes`)."""
    if not isinstance(text, str):
        text = json.dumps(text, indent=1, default=str)
    write_bytes(location, text.encode("utf-8"))


def delete(location: str) -> None:
    """Delete the file or folder tree at ``location``; nothing when absent."""
    import pyarrow.fs as pafs

    fs, path = filesystem(location)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def move(src: str, dest: str) -> None:
    """Rename ``src`` to ``dest`` on one filesystem, creating ``dest``'s folder (a rename locally and on
    HDFS; copy and delete on object stores)."""
    fs, s = filesystem(src)
    _, d = filesystem(dest)
    fs.create_dir(filesystem(parent(dest))[1], recursive=True)
    fs.move(s, d)


def makedirs(location: str) -> None:
    """Create the folder ``location`` and its parents (object stores need none: a no-op there)."""
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)


# --- Hadoop's FileSystem (Spark's JVM) as a pyarrow filesystem ---------------------------------------------
_HADOOP: dict[int, pafs.FileSystem] = {}


def hadoop_filesystem(spark: Any) -> pafs.FileSystem:
    """A pyarrow filesystem over Hadoop's FileSystem of ``spark``'s JVM (one per session): the schemes,
    credentials and mount tables of the cluster's Hadoop configuration."""
    import pyarrow.fs as pafs

    from ehrfm.hadoop_fs import HadoopHandler

    key = id(spark.sparkContext._jsc)
    if key not in _HADOOP:
        _HADOOP.clear()  # an older session's JVM is gone
        _HADOOP[key] = pafs.PyFileSystem(HadoopHandler(spark))
    return _HADOOP[key]
