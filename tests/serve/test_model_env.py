"""The registered model carries its environment: the ehrfm wheel under ``code/``, ``requirements.txt`` pinned
``==`` for every distribution (the wheel by its path in the model, never the bare name ``ehrfm``), no
machine-local paths; and loading + scoring it needs nothing outside those requirements (no Lightning, no
Spark), checked in a subprocess where every other installed distribution is made unimportable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from ehrfm.serve.model_env import ModelEnvError, ehrfm_wheel, pinned_requirements

REPO = Path(__file__).resolve().parents[2]

# Run in a fresh interpreter: only the model's pinned distributions (and ehrfm) can be imported; any other
# import raises ModuleNotFoundError, as it would where the model's environment was built from its
# requirements. Records who tried (third-party code may probe optional modules: mlflow tries pyspark).
_ISOLATED = r"""
import importlib.abc, importlib.metadata as md, json, sys
from packaging.utils import canonicalize_name
reqs, model_uri = sys.argv[1], sys.argv[2]
allowed = {canonicalize_name(l.split("==")[0]) for l in open(reqs).read().split() if "==" in l} | {"ehrfm"}
owners = md.packages_distributions()
tried = []

class OnlyPinned(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        dists = owners.get(name.partition(".")[0])
        if dists and not any(canonicalize_name(d) in allowed for d in dists):
            f = sys._getframe(1)
            while f is not None and f.f_code.co_filename.startswith("<frozen"):
                f = f.f_back
            tried.append([name, f.f_code.co_filename if f else "?"])
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, OnlyPinned())
import ehrfm.serve.core, ehrfm.serve.pyfunc
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(model_uri)
out = model.predict(ehrfm.serve.pyfunc.input_example())
heavy = ("lightning", "pytorch_lightning", "pyspark", "py4j", "sklearn", "sksurv", "matplotlib")
loaded = [m for m in heavy if m in sys.modules]
print("RESULT " + json.dumps({"rows": len(out), "tried": tried, "loaded": loaded}))
"""


def _model_dir(registry: dict[str, str], dst: Path) -> Path:
    import mlflow

    uri = f"models:/ehrfm/{registry['version']}"
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(dst), tracking_uri=registry["tracking_uri"])
    return Path(local)


def test_registered_model_carries_wheel_and_pins(registry: dict[str, str], tmp_path: Path) -> None:
    model = _model_dir(registry, tmp_path / "model")
    lines = [ln.strip() for ln in (model / "requirements.txt").read_text().splitlines() if ln.strip()]
    wheels = [ln for ln in lines if ln.endswith(".whl")]
    assert wheels == [f"code/{(p := next((model / 'code').glob('ehrfm-*.whl'))).name}"], lines
    assert not any(Requirement(ln).name == "ehrfm" for ln in lines if ln not in wheels), "bare `ehrfm`"
    for ln in lines:
        if ln not in wheels:
            spec = list(Requirement(ln).specifier)
            assert len(spec) == 1 and spec[0].operator == "==" and "+" not in spec[0].version, ln
    names = {Requirement(ln).name for ln in lines if ln not in wheels}
    assert {"torch", "numpy", "pandas", "pyarrow", "pyyaml", "orjson", "fhir-resources", "mlflow", "tqdm",
            "psutil", "cloudpickle"} <= names
    with zipfile.ZipFile(p) as zf:  # the wheel is ehrfm itself, without the test helpers
        files = set(zf.namelist())
    assert {"ehrfm/serve/pyfunc.py", "ehrfm/data/multitask.py"} <= files
    assert not {"ehrfm/serve/tiny.py", "ehrfm/data/standin.py", "ehrfm/serve/server.py"} & files
    assert not [f for f in files if "__pycache__" in f or f.startswith("tests/")]
    mlmodel = yaml.safe_load((model / "MLmodel").read_text())
    conf = mlmodel["flavors"]["python_function"]
    assert conf["code"] == "code" and conf["artifacts"] == {"serving": {"path": "artifacts/serving"}}
    # models from code: the model is built by its code file when loaded, nothing is unpickled
    assert conf["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    assert conf["model_code_path"] == "pyfunc_model.py" and (model / "pyfunc_model.py").is_file()
    assert not list(model.rglob("*.pkl")), "a pickled object in the model"
    del mlmodel["artifact_path"]  # the store's own location, by MLflow's design
    texts = {"MLmodel": json.dumps(mlmodel)} | {
        str(f.relative_to(model)): f.read_text() for f in model.rglob("*")
        if f.suffix in (".json", ".yaml", ".txt", ".yml") and f.is_file()}
    for name, text in texts.items():
        for bad in ("/tmp/", str(REPO), "ehrfm-register-", "ehrfm-wheel-"):
            assert bad not in text, f"{name} records a machine-local path ({bad})"


def test_serving_needs_only_the_pinned_distributions(registry: dict[str, str], tmp_path: Path) -> None:
    model = _model_dir(registry, tmp_path / "model")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", _ISOLATED, str(model / "requirements.txt"), str(model)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))[7:])
    assert result["rows"] == 3 and result["loaded"] == [], result
    pkg = str(REPO / "ehrfm")
    assert not [t for t in result["tried"] if t[1].startswith(pkg)], "ehrfm imports an unpinned distribution"


def test_pins_follow_the_installed_closure() -> None:
    pins = pinned_requirements([Requirement("mlflow"), Requirement("torch")])
    names = [p.split("==")[0] for p in pins]
    assert names == sorted(set(names))
    assert {"mlflow", "mlflow-skinny", "sqlalchemy", "torch", "numpy"} <= set(names)
    assert all("+" not in p for p in pins)  # torch 2.13.0+cpu is pinned as torch==2.13.0
    with pytest.raises(ModelEnvError, match="not installed here"):
        pinned_requirements([Requirement("surely-not-installed-ehrfm-dep")])


def test_a_given_wheel_must_be_the_running_version(tmp_path: Path) -> None:
    fake = tmp_path / "ehrfm-9.9.9-py3-none-any.whl"
    fake.write_bytes(b"")
    with pytest.raises(ModelEnvError, match="is not the running ehrfm"):
        ehrfm_wheel(tmp_path / "out", fake)
    with pytest.raises(ModelEnvError, match="does not exist"):
        ehrfm_wheel(tmp_path / "out", tmp_path / "missing.whl")
