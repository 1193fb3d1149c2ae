"""ehrfm works from its wheel, outside the source tree: build the wheel, install it (offline, with the
constraints
file) into a fresh venv, and run the whole pipeline there — synth -> ingest -> label -> prepare -> tokenize ->
pretrain -> finetune -> register -> one served prediction — on a tiny population, from a folder that is not
the
checkout. Presets and task specs must come from the installed package data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.spark]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 1200) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (f"{' '.join(cmd)} failed "
                                 f"({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out.stdout


def build_wheel(dest: Path) -> Path:
    """``pip wheel`` of the checkout (no deps, no build isolation: setuptools from this venv)."""
    env = {**os.environ, "PIP_CONSTRAINT": str(REPO / "constraints.txt")}
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest),
          str(REPO)],
         cwd=dest, env=env, timeout=600)
    (wheel,) = dest.glob("ehrfm-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """A fresh venv (outside the checkout) with the ehrfm wheel and its ``etl`` extra installed."""
    base = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(base)
    venv = base / "venv"
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env["PIP_CONSTRAINT"] = str(REPO / "constraints.txt")
    _run([sys.executable, "-m", "venv", str(venv)], cwd=base, env=env)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"),
          f"{wheel}[etl]"], cwd=base, env=env, timeout=1800)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    return venv, env


def test_installed_package_has_its_data_and_no_checkout(installed: tuple[Path, dict[str, str]],
                                                        tmp_path: Path) -> None:
    venv, env = installed
    probe = ("import json, ehrfm, ehrfm.resources as r, ehrfm.labels.parse as p\n"
             "print(json.dumps({'file': ehrfm.__file__, 'tasks': p.available_tasks(),"
             " 'model': r.available_presets('model'), 'pretrain': r.available_presets('pretrain'),"
             " 'typed': (r.presets_dir().parent / 'py.typed').exists()}))")
    info = json.loads(_run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, env=env).strip())
    assert not info["file"].startswith(str(REPO)), info["file"]
    assert "readmission_30d" in info["tasks"] and len(info["tasks"]) >= 6
    assert {"tiny", "small"} <= set(info["model"]) and "tiny" in info["pretrain"] and info["typed"]
    assert _run(["ehrfm", "--version"], cwd=tmp_path, env=env).strip().startswith("ehrfm ")
    assert "--tokenizer.max_len" in _run(["ehrfm", "tokenize", "--help"], cwd=tmp_path, env=env)


def readme_commands(readme: Path = REPO / "README.md") -> list[str]:
    """The ``bash`` blocks of the README's "Usage by layer" section, one command per logical line, in
    order."""
    text = readme.read_text()
    section = text.split("## Usage by layer", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        joined = block.replace("\\\n", " ")
        commands += [line for line in (ln.strip() for ln in joined.splitlines()) if line
                     and not line.startswith("#")]
    return commands


def test_readme_commands_are_a_pipeline() -> None:
    cmds = readme_commands()
    stages = [c.split()[1] for c in cmds]
    assert stages == ["synth", "ingest", "label", "prepare", "tokenize", "pretrain", "finetune", "evaluate",
                      "register",
                      "score"], cmds


def test_readme_pipeline_runs_from_the_wheel(installed: tuple[Path, dict[str, str]], tmp_path: Path) -> None:
    """synth -> ingest -> label -> prepare -> tokenize -> pretrain -> finetune -> evaluate -> register ->
    score, the
    README's commands verbatim, with the installed console script, in a folder that is not the checkout."""
    _, env = installed
    for cmd in readme_commands():
        _run(["bash", "-c", cmd], cwd=tmp_path, env=env, timeout=1200)
    out = tmp_path / "out"
    assert (out / "meds" / "metadata" / "subject_splits.parquet").exists()
    kinds = json.loads((out / "labels" / "tasks.json").read_text())
    # one MEDS label file per task, plus the sidecar of each time-to-event / forecast task
    assert sorted(p.name for p in (out / "labels").glob("*.parquet")) == sorted(
        [f"{t}.parquet" for t in kinds] + [f"{t}.extra.parquet" for t, k in kinds.items() if k != "binary"])
    assert json.loads((out / "tokens" / "tokenize.json").read_text())["config"]["max_len"] == 512
    assert (out / "runs" / "finetune" / "predictions.parquet").exists()
    assert (out / "evaluation" / "report.md").exists()
    assert any((out / "scores").glob("*.parquet"))
    probe = ("import mlflow; c = mlflow.MlflowClient(); v = c.get_model_version_by_alias('ehrfm', "
             "'champion'); print(v.version)")
    uri = f"sqlite:///{out / 'mlflow.db'}"
    assert _run(["python", "-c", probe], cwd=tmp_path, env={**env, "MLFLOW_TRACKING_URI": uri}).strip() == "1"
    assert not (tmp_path / "mlruns").exists()  # nothing lands in ./mlruns of the current folder
