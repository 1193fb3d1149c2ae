"""Hadoop's FileSystem in Spark's JVM as a pyarrow filesystem (:func:`ehrfm.storage.hadoop_filesystem`).

The driver of a Spark stage reads and writes its small files (markers, summaries, ``vocab.json``) and renames
finished shards through the same Hadoop FileSystem, configuration and credentials as the executors, for any
scheme the cluster serves (``hdfs://``, ``s3a://``, ``viewfs://``, ``abfs://`` ...).
"""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs


class _HadoopOutput(io.RawIOBase):
    """A write-only stream into one Hadoop file: bytes go to the JVM in 4 MiB pieces (py4j copies each
    ``bytearray`` once); the file appears when the stream closes."""

    PIECE = 4 << 20

    def __init__(self, stream: Any) -> None:
        super().__init__()
        self._stream = stream
        self._buf = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:  # type: ignore[override]
        view = memoryview(data).cast("B")
        self._buf += view
        if len(self._buf) >= self.PIECE:
            self._flush_piece()
        return len(view)

    def _flush_piece(self) -> None:
        if self._buf:
            self._stream.write(self._buf)
            self._buf = bytearray()

    def close(self) -> None:
        if not self.closed:
            self._flush_piece()
            self._stream.close()
        super().close()


class HadoopHandler(pafs.FileSystemHandler):  # type: ignore[misc]  # pyarrow has no stubs
    """``pyarrow.fs.FileSystemHandler`` over ``org.apache.hadoop.fs.FileSystem`` through py4j. Paths are full
    URIs (``viewfs://cluster/data/meds/summary.json``); the children of a folder are reported under the URI
    the caller gave (Hadoop qualifies ``hdfs:///x`` to ``hdfs://namenode:8020/x``; readers strip the prefix
    they passed)."""

    def __init__(self, spark: Any) -> None:
        super().__init__()
        self._jvm = spark.sparkContext._jvm
        self._conf = spark.sparkContext._jsc.hadoopConfiguration()

    # --- helpers -----------------------------------------------------------------------------------------
    def _path(self, uri: str) -> Any:
        return self._jvm.org.apache.hadoop.fs.Path(uri)

    def _fs(self, uri: str) -> tuple[Any, Any]:
        p = self._path(uri)
        return p.getFileSystem(self._conf), p

    def _info(self, uri: str, status: Any) -> Any:
        if status is None:
            return pafs.FileInfo(uri, pafs.FileType.NotFound)
        if status.isDirectory():
            return pafs.FileInfo(uri, pafs.FileType.Directory)
        return pafs.FileInfo(uri, pafs.FileType.File, size=int(status.getLen()),
                             mtime=status.getModificationTime() / 1000.0)

    def _status(self, uri: str) -> Any:
        fs, p = self._fs(uri)
        return fs.getFileStatus(p) if fs.exists(p) else None

    # --- FileSystemHandler -------------------------------------------------------------------------------
    def get_type_name(self) -> str:
        """Name shown by pyarrow."""
        return "hadoop-jvm"

    def normalize_path(self, path: str) -> str:
        """Paths are URIs, kept as given."""
        return path

    def get_file_info(self, paths: list[str]) -> list[Any]:
        """One FileInfo per path."""
        return [self._info(p, self._status(p)) for p in paths]

    def get_file_info_selector(self, selector: Any) -> list[Any]:
        """The entries under a folder (recursively when asked), named under the caller's URI."""
        base = selector.base_dir.rstrip("/")
        fs, p = self._fs(base)
        if not fs.exists(p):
            if selector.allow_not_found:
                return []
            raise FileNotFoundError(base)
        root = str(fs.makeQualified(p).toUri().getPath()).rstrip("/")
        out: list[Any] = []
        pending = [p]
        while pending:
            for status in fs.listStatus(pending.pop()):
                rel = str(status.getPath().toUri().getPath())[len(root):].lstrip("/")
                out.append(self._info(f"{base}/{rel}", status))
                if status.isDirectory() and selector.recursive:
                    pending.append(status.getPath())
        return out

    def create_dir(self, path: str, recursive: bool) -> None:
        """mkdirs (Hadoop always creates the parents)."""
        fs, p = self._fs(path)
        fs.mkdirs(p)

    def delete_dir(self, path: str) -> None:
        """Delete a folder tree."""
        fs, p = self._fs(path)
        fs.delete(p, True)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        """Delete what a folder holds, keep the folder."""
        fs, p = self._fs(path)
        if not fs.exists(p):
            if missing_dir_ok:
                return
            raise FileNotFoundError(path)
        for status in fs.listStatus(p):
            fs.delete(status.getPath(), True)

    def delete_root_dir_contents(self) -> None:
        """Refused: no stage empties a filesystem's root."""
        raise PermissionError("ehrfm never empties a filesystem root")

    def delete_file(self, path: str) -> None:
        """Delete one file."""
        fs, p = self._fs(path)
        if not fs.delete(p, False) and fs.exists(p):
            raise OSError(f"{path}: Hadoop could not delete it")

    def move(self, src: str, dest: str) -> None:
        """Rename ``src`` to ``dest`` (a file in the way is replaced, as pyarrow's filesystems do)."""
        fs, s = self._fs(src)
        d = self._path(dest)
        if fs.exists(d) and fs.getFileStatus(d).isFile():
            fs.delete(d, False)
        parent_dir = d.getParent()
        if parent_dir is not None and not fs.exists(parent_dir):
            fs.mkdirs(parent_dir)
        if not fs.rename(s, d):
            raise OSError(f"{src} -> {dest}: Hadoop's rename failed")

    def copy_file(self, src: str, dest: str) -> None:
        """Copy one file through the JVM (FileUtil.copy)."""
        fs, s = self._fs(src)
        dfs, d = self._fs(dest)
        self._jvm.org.apache.hadoop.fs.FileUtil.copy(fs, s, dfs, d, False, True, self._conf)

    def open_input_stream(self, path: str) -> pa.NativeFile:
        """The whole file in memory (the driver reads only small files through here)."""
        return self.open_input_file(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        """The whole file in memory, seekable."""
        fs, p = self._fs(path)
        stream = fs.open(p)
        try:
            data = bytes(stream.readAllBytes())
        finally:
            stream.close()
        return pa.BufferReader(data)

    def open_output_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        """A new file (replacing one in the way), visible when closed."""
        fs, p = self._fs(path)
        return pa.PythonFile(_HadoopOutput(fs.create(p, True)), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        """Not needed by any stage (object stores have no append)."""
        raise NotImplementedError("append is not supported on Hadoop filesystems by ehrfm")
