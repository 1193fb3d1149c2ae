"""ehrfm.storage: local paths, pyarrow's S3 (moto) and Hadoop's FileSystem in Spark's JVM (viewfs)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm import storage
from ehrfm.config.base import ConfigError


def test_names_and_schemes() -> None:
    assert storage.scheme("/x") is None and storage.scheme("file:/x") == "file"
    assert storage.scheme("S3A://b/x") == "s3a" and storage.is_remote("hdfs:///x")
    assert not storage.is_remote("file:///x") and not storage.is_remote("rel/dir")
    assert storage.join("hdfs:///a/", "b", "/c/", ".") == "hdfs:///a/b/c"
    assert storage.spark_uri("s3://b/k") == "s3a://b/k" and storage.spark_uri("/x y") == "file:///x y"
    assert storage.spark_uri("file:/x") == "file:///x" and storage.spark_uri("hdfs:///x") == "hdfs:///x"
    assert storage.normalize("s3a://b/k/") == "s3a://b/k"
    assert storage.normalize("file:///tmp/a%20b") == "/tmp/a b"
    assert storage.name("viewfs://t/data/x.json") == "x.json"
    assert storage.parent("viewfs://t/data/x.json") == "viewfs://t/data"
    with pytest.raises(ConfigError, match="hdfs"):
        storage.local_path("hdfs:///x")


def _roundtrip(base: str) -> None:
    target = storage.join(base, "a", "b.json")
    storage.write_text(target, {"x": 1})
    assert storage.read_json(target) == {"x": 1}
    assert storage.is_file(target) and storage.is_dir(storage.join(base, "a"))
    assert storage.list_names(storage.join(base, "a")) == ["b.json"]
    fs, path = storage.filesystem(storage.join(base, "t.parquet"))
    pq.write_table(pa.table({"v": [1, 2, 3]}), path, filesystem=fs)
    assert pq.read_table(path, filesystem=fs).column("v").to_pylist() == [1, 2, 3]
    storage.move(storage.join(base, "t.parquet"), storage.join(base, "c", "t.parquet"))
    assert not storage.exists(storage.join(base, "t.parquet"))
    assert storage.is_file(storage.join(base, "c", "t.parquet"))
    storage.delete(storage.join(base, "c"))
    assert not storage.exists(storage.join(base, "c"))
    assert storage.list_names(storage.join(base, "missing")) == []


def test_local_roundtrip(tmp_path: Path) -> None:
    _roundtrip(str(tmp_path))
    _roundtrip(tmp_path.as_uri())


def test_s3_roundtrip(s3, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _roundtrip(s3.uri)
    # s3a:// (Hadoop's name) is served by pyarrow's S3 when no Spark session runs in the process (with one,
    # Hadoop's s3a connector would serve it: the cluster's credentials)
    monkeypatch.setattr(storage, "active_spark", lambda: None)
    storage.write_text(s3.uri.replace("s3://", "s3a://") + "/z.txt", "hello")
    assert storage.read_text(s3.uri + "/z.txt") == "hello"


def test_viewfs_goes_through_hadoop(viewfs, spark) -> None:  # type: ignore[no-untyped-def]
    _roundtrip(viewfs.uri)
    storage.write_text(storage.join(viewfs.uri, "seen.json"), [1, 2])
    assert (viewfs.local / "seen.json").read_text().replace(" ", "").replace("\n", "") == "[1,2]"
    # Spark writes there too, and the Hadoop listing names children under the caller's URI
    spark.range(3).write.mode("overwrite").parquet(storage.join(viewfs.uri, "sp"))
    import pyarrow.fs as pafs

    fs, base = storage.filesystem(storage.join(viewfs.uri, "sp"))
    names = [i.path for i in fs.get_file_info(pafs.FileSelector(base)) if i.path.endswith(".parquet")]
    assert names and all(n.startswith(viewfs.uri + "/sp/part-") for n in names)


def test_hadoop_only_scheme_without_spark_names_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "active_spark", lambda: None)
    with pytest.raises(ConfigError, match=r"viewfs.*Spark engine"):
        storage.filesystem("viewfs://cluster/data/x")
