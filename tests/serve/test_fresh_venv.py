"""A registered model loads where ehrfm was never installed from source: a fresh venv outside the checkout,
built from nothing but the model's own ``requirements.txt`` (pinned distributions + the ehrfm wheel it
carries), loads ``models:/<name>@champion``, scores a real Synthea bundle with the ehrfm of that wheel,
imports no Lightning and no Spark, and answers exactly what the in-project pyfunc answers. There, with
no source tree, ehrfm reassembles its own wheel from the installed files for the next registration.

Slow: the install takes ~1 min on the dev machine with a warm pip cache (torch from the local wheel). It
needs the package index: the machine's local mirrors do not hold the pinned versions (e.g. aiohttp,
mlflow)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import venv
import zipfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]

# Runs inside the fresh venv (cwd: a scratch folder, no PYTHONPATH): prints one JSON line.
_SCORE = r"""
import json, pathlib, sys
import mlflow.pyfunc, pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1])
import ehrfm
out = model.predict(pd.DataFrame([{"bundle": pathlib.Path(sys.argv[2]).read_text()}]))
plain = lambda o: o.item() if hasattr(o, "item") else o.tolist()
rows = json.loads(json.dumps(out.to_dict(orient="records"), default=plain))
heavy = [m for m in ("lightning", "pytorch_lightning", "pyspark", "py4j") if m in sys.modules]
print("RESULT " + json.dumps({"ehrfm": ehrfm.__file__, "heavy": heavy, "rows": rows}))
"""


def _plain(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The JSON round trip the venv script applies (numpy scalars/arrays -> Python)."""
    text = json.dumps(records, default=lambda o: o.item() if hasattr(o, "item") else o.tolist())
    out: list[dict[str, Any]] = json.loads(text)
    return out


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd[:4])} ... failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def test_model_loads_and_scores_in_a_fresh_venv(serving_dir: Path, bundle_texts: list[str],
                                                tmp_path: Path) -> None:
    import mlflow

    from ehrfm.serve.register import register

    t0 = time.time()
    reg = register(serving_dir.parent / "finetuned", "ehrfm", "champion", store_dir=tmp_path / "store")
    uri = "models:/ehrfm@champion"
    model_dir = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path / "model"),
                                                         tracking_uri=reg.tracking_uri))
    t_register = time.time() - t0

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PIP_CONSTRAINT")}
    env |= {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
            "MLFLOW_TRACKING_URI": reg.tracking_uri}
    fresh = tmp_path / "venv"  # outside the checkout; no access to the dev environment's site-packages
    t0 = time.time()
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(fresh)
    py = str(fresh / "bin" / "python")
    # the requirements name the wheel by its path inside the model: pip runs from the model folder, as
    # MLflow's virtualenv env manager does
    _run([py, "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), "-r", "requirements.txt"],
         model_dir, env, timeout=1800)
    t_install = time.time() - t0

    bundle = tmp_path / "bundle.json"
    bundle.write_text(bundle_texts[0])  # the smallest real Synthea patient bundle
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    t0 = time.time()
    proc = _run([py, "-c", _SCORE, uri, str(bundle)], scratch, env, timeout=600)
    t_score = time.time() - t0
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    print(f"fresh venv: register {t_register:.1f} s, venv + install {t_install:.1f} s, "
          f"load + score {t_score:.1f} s")

    ehrfm_file = Path(result["ehrfm"]).resolve()
    assert ehrfm_file.is_relative_to(fresh.resolve()) and not ehrfm_file.is_relative_to(REPO), ehrfm_file
    assert result["heavy"] == [], f"serving imported {result['heavy']}"
    mlflow.set_tracking_uri(reg.tracking_uri)
    here = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame([{"bundle": bundle_texts[0]}]))
    assert result["rows"] == _plain(here.to_dict(orient="records"))
    assert len(result["rows"]) == 3

    # where ehrfm is installed from a wheel (no source tree), the wheel a new registration ships is
    # reassembled from the installed files: the same files, byte for byte, as the wheel installed
    rebuild = "import sys; from ehrfm.serve.model_env import ehrfm_wheel as w, source_tree as s; " \
              "assert s() is None; print(w(sys.argv[1]))"
    out = _run([py, "-c", rebuild, str(tmp_path / "rebuilt")], scratch, env, timeout=300)
    shipped = next((model_dir / "code").glob("ehrfm-*.whl"))
    with zipfile.ZipFile(shipped) as a, zipfile.ZipFile(out.stdout.strip().splitlines()[-1]) as b:
        names = sorted(n for n in a.namelist() if not n.endswith(".dist-info/RECORD"))
        assert names == sorted(n for n in b.namelist() if not n.endswith(".dist-info/RECORD"))
        assert all(a.read(n) == b.read(n) for n in names)
