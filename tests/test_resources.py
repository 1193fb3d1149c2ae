"""ehrfm.resources: package data from a zip import (spark-submit --py-files) is copied once and cleaned up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ehrfm.spark import package_zip


def test_zip_imported_package_data_is_removed_when_the_process_exits(tmp_path: Path) -> None:
    zipped = package_zip(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import ehrfm, ehrfm.resources as r; "
            "assert ehrfm.__file__.startswith(sys.argv[1]), ehrfm.__file__; "
            "d = r.tasks_dir(); assert (d / 'readmission_30d.yaml').is_file(); print(d)")
    # the zip first on sys.path: ehrfm and its data come from the zip (asserted), as on an executor
    done = subprocess.run([sys.executable, "-I", "-c", code, str(zipped)], capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-2000:]
    copied = Path(done.stdout.strip().splitlines()[-1])
    assert copied.name.startswith("ehrfm-ehrfm-tasks-")
    assert not copied.exists()
