"""Input discovery of local folders (no Spark): each real file once, link cycles never followed."""

from __future__ import annotations

import os
from pathlib import Path

from ehrfm.ingest.fhir.paths import LocalWalk


def test_walk_skips_cycles_and_reads_each_real_file_once(tmp_path: Path) -> None:
    top = tmp_path / "in"
    (top / "a" / "deep").mkdir(parents=True)
    (top / "b").mkdir()
    for p in (top / "a" / "x.json", top / "a" / "deep" / "y.ndjson.gz", top / "b" / "z.ndjson"):
        p.write_bytes(b"{}")
    (top / "a" / "notes.txt").write_text("not an input")
    (top / "a" / "_hidden.json").write_text("{}")
    os.symlink(top, top / "a" / "deep" / "loop")  # a cycle back to the top
    os.symlink(top / "b", top / "a" / "to_b")  # a second route to a folder
    os.symlink(top / "b" / "z.ndjson", top / "a" / "same.ndjson")  # a second name for a file
    os.symlink(top / "gone", top / "a" / "broken.json")

    walk = LocalWalk()
    walk.add_dir(str(top))
    walk.add_file(str(top / "a" / "x.json"))  # named again explicitly: still once
    got = sorted(os.path.relpath(os.path.realpath(path), top) for path, _ in walk.files.values())
    assert got == ["a/deep/y.ndjson.gz", "a/x.json", "b/z.ndjson"]
    skipped = {os.path.relpath(s["path"], top): s["reason"] for s in walk.skipped}
    assert skipped["a/deep/loop"].startswith("link cycle")
    assert skipped["a/broken.json"] == "broken link"
    # z.ndjson has two names (the first found is read, the other named)
    assert len({"a/same.ndjson", "b/z.ndjson"} & set(skipped)) == 1
    assert skipped["a/x.json"].startswith("same file as")
    # b is reached twice (as in/b and through the link in/a/to_b): read once, the other route named
    assert {"a/to_b", "b"} & set(skipped) and len({"a/to_b", "b"} & set(skipped)) == 1
    assert len(walk.skipped) == 5

    again = LocalWalk()
    again.add_dir(str(top / "a" / "deep" / "loop"))  # entering through the link itself: same files
    assert len(again.files) == 3
