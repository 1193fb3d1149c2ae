"""Test inputs on a remote filesystem: a local folder tree copied to a URI through :mod:`ehrfm.storage`."""

from __future__ import annotations

from pathlib import Path

from ehrfm import storage


def upload(local: Path, uri: str) -> str:
    """Copy every file under the local folder ``local`` to the same relative path under ``uri`` (``s3://``,
    ``viewfs://`` ...: pyarrow's or Hadoop's filesystem); returns ``uri``."""
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.write_bytes(storage.join(uri, f.relative_to(local).as_posix()), f.read_bytes())
    return uri


def stray_uri_folders(*folders: Path) -> list[Path]:
    """Local folders named like a URI scheme (``s3:``, ``viewfs:``) under ``folders``: what a URI turned into
    a local path by mistake leaves behind."""
    return [p for f in folders for p in f.rglob("*") if p.is_dir() and p.name.endswith(":")]
