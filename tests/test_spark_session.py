"""``ehrfm.spark.get_spark``: on a cluster master it ships the package to the executors itself; the zip holds
the code and the package data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ehrfm.spark import package_zip


def test_package_zip_holds_code_and_data_only(tmp_path: Path) -> None:
    first = package_zip(tmp_path)
    assert package_zip(tmp_path) == first  # built once per content
    names = zipfile.ZipFile(first).namelist()
    assert "ehrfm/__init__.py" in names and "ehrfm/tasks/readmission_30d.yaml" in names
    assert "ehrfm/presets/model/tiny.yaml" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


_PROBE = """
import json
from ehrfm.spark import get_spark
spark = get_spark("ehrfm-probe", master="local-cluster[1,1,1024]")
def where(_):
    import ehrfm
    from ehrfm import resources
    return [ehrfm.__file__, sorted(p.name for p in resources.tasks_dir().glob("*.yaml"))[:1]]
print(json.dumps(spark.range(1).rdd.map(where).collect()[0]))
spark.stop()
"""


@pytest.mark.spark
@pytest.mark.slow
def test_cluster_executors_import_the_shipped_package() -> None:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
    proc = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    module, tasks = json.loads(proc.stdout.strip().splitlines()[-1])
    assert ".zip/ehrfm/__init__.py" in module  # the executor's ehrfm is the shipped one
    assert tasks == ["death_1y_tte.yaml"]
