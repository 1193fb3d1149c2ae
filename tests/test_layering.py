"""DESIGN.md separations, checked on what really gets imported (transitively, in a fresh interpreter):
ingest/prepare/labels/tokenize/synth/evaluate load no torch; ops/models/train/data load no Spark; only
tracking/serve (and the demo/CLI glue) load MLflow; serving loads no Lightning and no Spark; the configs,
the Layout and the CLI parser load none of the heavy libraries."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ehrfm"
HEAVY = ["torch", "pyspark", "mlflow", "lightning", "pytorch_lightning", "sklearn", "sksurv"]

# group of modules -> libraries that importing any of them must not load
RULES: dict[str, tuple[list[str], list[str]]] = {
    "data layer": (["ingest", "prepare", "labels", "tokenize", "synth", "schema.py", "vocab.py", "spark.py"],
                   ["torch", "mlflow", "lightning"]),
    "evaluate": (["evaluate"], ["torch", "mlflow", "lightning", "pyspark"]),
    "model layer": (["ops", "models", "data"], ["pyspark", "mlflow", "lightning"]),
    "train": (["train"], ["pyspark", "mlflow"]),
    # zero-shot simulation and attributions run a trained model in one process: no Spark, no MLflow, and
    # no Lightning (they load the saved model folder, they do not train)
    "simulate and explain": (["simulate", "explain"], ["pyspark", "mlflow", "lightning"]),
    "serving": (["serve/core.py", "serve/pyfunc.py", "serve/fhir_io.py"],
                ["lightning", "pyspark", "sklearn"]),
    # the front process of `ehrfm serve` reads, limits, logs and answers; scoring lives in its workers
    "server front": (["serve/server/app.py", "serve/server/pool.py", "serve/server/stage.py",
                      "serve/server/errors.py", "serve/server/logs.py", "serve/server/protocol.py",
                      "serve/server/discovery.py", "serve/outcome.py", "serve/locate.py"],
                     ["torch", "lightning", "pyspark", "pandas", "mlflow"]),
    "configs and CLI": (["config", "layout.py", "resources.py", "cli.py"],
                        HEAVY + ["pandas", "numpy", "pyarrow"]),
}

# modules that are Spark jobs or runners by design (their layer's heavy engine is their point)
ENGINE_MODULES = {"train/stage.py", "train/loop.py", "train/base.py", "train/pretrain.py",
                  "train/finetune.py",
                  "train/pretrain_run.py", "train/finetune_run.py", "train/predict.py"}


def _modules(parts: list[str]) -> list[str]:
    files: list[Path] = []
    for part in parts:
        target = PKG / part
        files += [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
    names = []
    for f in files:
        if not f.exists():
            continue
        rel = f.relative_to(PKG.parent).with_suffix("")
        parts_ = list(rel.parts)
        if parts_[-1] == "__init__":
            parts_ = parts_[:-1]
        names.append(".".join(parts_))
    return names


# ``absent`` libraries are made unimportable first (as in an environment built from a served model's own
# requirements): MLflow probes for pyspark and uses it when present, so "loaded" alone would blame MLflow.
_PROBE = """
import importlib, json, sys
mods, banned = json.loads(sys.argv[1]), json.loads(sys.argv[2])
absent = json.loads(sys.argv[3]) if len(sys.argv) > 3 else []
for name in absent:
    sys.modules[name] = None
bad = []
for m in mods:
    try:
        importlib.import_module(m)
    except ImportError as exc:
        bad.append([m, [f"ImportError: {exc}"]])
        break
    loaded = [b for b in banned if sys.modules.get(b) is not None]
    if loaded:
        bad.append([m, loaded])
        break
print(json.dumps(bad))
"""


@pytest.mark.parametrize("group", list(RULES))
def test_importing_a_layer_loads_no_forbidden_library(group: str) -> None:
    parts, banned = RULES[group]
    mods = _modules(parts)
    if group == "train":
        mods = [m for m in mods if m.removeprefix("ehrfm.").replace(".", "/") + ".py" not in ENGINE_MODULES]
    assert mods, f"no modules found for {group}"
    absent = ["pyspark", "lightning", "pytorch_lightning"] if group == "serving" else []
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(mods), json.dumps(banned),
                          json.dumps(absent)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    bad = json.loads(out.stdout.strip().splitlines()[-1])
    assert not bad, f"{group}: importing {bad[0][0]} loaded {bad[0][1]} (forbidden: {banned})"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


DIRECT_FORBIDDEN = {
    "torch": ["ingest", "prepare", "labels", "tokenize", "schema.py", "vocab.py", "spark.py", "synth",
              "evaluate",
              "config", "layout.py"],
    "pyspark": ["ops", "models", "train", "data", "config", "simulate", "explain"],
    "mlflow": ["ingest", "prepare", "labels", "tokenize", "ops", "models", "data", "synth", "evaluate",
               "config"],
    "lightning": ["ingest", "prepare", "labels", "tokenize", "ops", "models", "synth", "data", "serve",
                  "config"],
}


def test_no_forbidden_import_statement_even_lazy() -> None:
    """Also the lazy (function-level) imports a transitive probe cannot see until the code runs."""
    bad = []
    for lib, parts in DIRECT_FORBIDDEN.items():
        for part in parts:
            target = PKG / part
            files = [target] if target.suffix == ".py" else sorted(target.rglob("*.py"))
            bad += [f"{f.relative_to(PKG.parent)} imports {lib}" for f in files if f.exists()
                    and lib in _imports(f)]
    assert not bad, "layering violations:\n" + "\n".join(bad)


def test_probe_detects_a_violation() -> None:
    """The probe itself can fail: importing ehrfm.models loads torch."""
    out = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(["ehrfm.models"]), json.dumps(["torch"])],
                         capture_output=True, text=True, timeout=600)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [["ehrfm.models", ["torch"]]]


def test_light_serving_constants_match() -> None:
    """The light modules the server front uses hold the one definition the scoring stack re-exports."""
    from ehrfm.serve import core, fhir_io, locate, outcome

    assert core.SERVE_JSON is locate.SERVE_JSON
    assert fhir_io.error_outcome is outcome.error_outcome
