"""The notebooks' shared step: a small pipeline output in a work folder, built once and cached.

synth -> ingest (Spark) -> label (Spark) -> prepare -> tokenize -> pretrain -> finetune: the demo's steps
(:func:`ehrfm.pipeline.pipeline_steps`) in the demo's folder layout (:class:`~ehrfm.layout.Layout`), each
run as
the ``ehrfm <stage> --config <step>.yaml --root <workdir>`` command a user would type (in a child process,
so a
notebook kernel does not keep a Spark JVM or a Lightning trainer alive). A step is skipped when its marker
in ``<work>/.done/``
records the same settings as now; changing a setting reruns that step and every step after it.

Settings come from environment variables so the test-suite and a user can size the run without editing
notebooks:

=========================  ====================================  ==========================
variable                   meaning                               default
=========================  ====================================  ==========================
EHRFM_NB_WORKDIR           work folder                           ~/.cache/ehrfm/notebooks
EHRFM_NB_PATIENTS          synthetic population size             1000
EHRFM_NB_SEED              synthetic population seed             7
EHRFM_NB_PRETRAIN_STEPS    pretraining optimizer steps           100
EHRFM_NB_FINETUNE_STEPS    finetuning optimizer steps (0: skip)  100
EHRFM_SPARK_MASTER         Spark master of ingest/label          the CLIs' default (local[*])
=========================  ====================================  ==========================

(The notebooks read a few more, for their own sizes: see notebooks/README.md.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from ehrfm.config.demo import DemoConfig
from ehrfm.config.spark import SparkConfig
from ehrfm.layout import Layout
from ehrfm.pipeline import PipelineStep, pipeline_steps

STEPS = ("synth", "ingest", "label", "prepare", "tokenize", "pretrain", "finetune")
# synthetic records run 2015..2025: a fixed FHIR max-time keeps reruns identical (no "now")
MAX_TIME = "2030-01-01"
# the notebooks evaluate binary and time-to-event tasks; forecasting is left out of their finetuning run
FINETUNE_TASKS = ("readmission_30d", "mortality_inhospital", "mortality_30d_post_discharge", "los_gt_7d",
                  "death_1y_tte")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r}: expected an integer") from None


@dataclass(frozen=True)
class Settings:
    """Size and location of the notebooks' pipeline run."""

    workdir: Path
    n_patients: int = 1000
    seed: int = 7
    pretrain_steps: int = 100
    finetune_steps: int = 100

    @classmethod
    def from_env(cls) -> Settings:
        """Settings from the EHRFM_NB_* environment variables (see the module docstring)."""
        default = Path.home() / ".cache" / "ehrfm" / "notebooks"
        s = cls(
            workdir=Path(os.environ.get("EHRFM_NB_WORKDIR") or default).expanduser().resolve(),
            n_patients=_env_int("EHRFM_NB_PATIENTS", 1000),
            seed=_env_int("EHRFM_NB_SEED", 7),
            pretrain_steps=_env_int("EHRFM_NB_PRETRAIN_STEPS", 100),
            finetune_steps=_env_int("EHRFM_NB_FINETUNE_STEPS", 100),
        )
        if s.n_patients < 20:
            raise ValueError(f"EHRFM_NB_PATIENTS={s.n_patients}: need at least 20 patients for three splits")
        if s.pretrain_steps < 1:
            raise ValueError(f"EHRFM_NB_PRETRAIN_STEPS={s.pretrain_steps}: need at least 1 step")
        return s


def notebook_config(s: Settings) -> DemoConfig:
    """The pipeline the notebooks build: the demo's steps, sized by ``s``, no evaluation or registry."""
    return DemoConfig(n_patients=s.n_patients, seed=s.seed, max_time=MAX_TIME,
                      pretrain_steps=s.pretrain_steps,
                      finetune_steps=s.finetune_steps, finetune_tasks=list(FINETUNE_TASKS), engine="local",
                      evaluate=False, register=False,
                      spark=SparkConfig(master=os.environ.get("EHRFM_SPARK_MASTER") or None))


def layout_of(s: Settings) -> Layout:
    """The notebooks' pipeline root (the work folder)."""
    return Layout(root=str(s.workdir))


def predictions(layout: Layout) -> Path | None:
    """The finetuned model's held-out predictions, or None when finetuning was skipped."""
    p = layout.finetune_run.predictions
    return p if p.exists() else None


def steps_of(s: Settings) -> dict[str, PipelineStep]:
    """The pipeline steps (synth .. finetune) for ``s``, by key."""
    return {step.key: step for step in pipeline_steps(notebook_config(s), progress=False)}


def _outputs(key: str, layout: Layout) -> list[Path]:
    """What a rerun of step ``key`` deletes first."""
    return {
        "synth": [layout.synthetic_dir], "ingest": [layout.meds_paths.root], "label": [layout.labels_dir],
        # prepare's vocab.json/bins.json live in tokens/ too: tokenize clears only the token rows
        "prepare": [layout.token_paths.root],
        "tokenize": [layout.token_paths.pretrain, layout.token_paths.tasks],
        "pretrain": [layout.pretrain_run.root], "finetune": [layout.finetune_run.root],
    }[key]


def step_command(step: PipelineStep, layout: Layout) -> list[str]:
    """``ehrfm`` arguments of one step: its config is written to ``<logs>/<key>.yaml`` and the command is
    ``ehrfm <stage> --config <that file> --root <workdir>``."""
    cfg_file = layout.logs_dir / f"{step.key}.yaml"
    cfg_file.parent.mkdir(parents=True, exist_ok=True)
    cfg_file.write_text(step.config.to_yaml())
    return [*step.stage.split(), "--config", str(cfg_file), "--root", str(layout.root_dir)]


def _keys(s: Settings) -> dict[str, object]:
    """What each step's output depends on: its config and every earlier step's (a change reruns what
    follows)."""
    keys: dict[str, object] = {}
    chain: list[dict[str, object]] = []
    for key, step in steps_of(s).items():
        chain.append({"step": key, "stage": step.stage, "config": step.config.to_dict()})
        keys[key] = list(chain)
    return keys


@dataclass
class StepResult:
    """One step of :func:`ensure_pipeline`."""

    step: str
    status: str  # "ran", "cached" or "skipped"
    seconds: float
    log: str | None = None


def run_step(step: str, s: Settings, echo: Callable[[str], None] | None = print) -> StepResult:
    """Run one step unless its cached output matches ``s``; raise RuntimeError (with the log's tail) on
    failure."""
    layout = layout_of(s)
    steps = steps_of(s)
    if step not in STEPS:
        raise ValueError(f"unknown pipeline step {step!r}; steps are {STEPS}")
    if step not in steps:
        return StepResult(step, "skipped", 0.0)
    marker = layout.root_dir / ".done" / f"{step}.json"
    key = json.loads(json.dumps(_keys(s)[step]))
    if marker.exists() and json.loads(marker.read_text()) == key:
        return StepResult(step, "cached", 0.0)
    for out in _outputs(step, layout):
        shutil.rmtree(out, ignore_errors=True)
    for later in STEPS[STEPS.index(step):]:  # what follows was built from the old output
        (layout.root_dir / ".done" / f"{later}.json").unlink(missing_ok=True)
    args = step_command(steps[step], layout)
    log = layout.logs_dir / f"{step}.log"
    env = {**os.environ, "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")}
    if echo:
        echo(f"[{step}] ehrfm {' '.join(args)}")
    t0 = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.call([sys.executable, "-m", "ehrfm.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                             env=env, cwd=s.workdir)
    dt = time.perf_counter() - t0
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"pipeline step {step!r} failed (exit {rc}); log {log}:\n{tail}")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(key))
    return StepResult(step, "ran", round(dt, 1), str(log))


def ensure_pipeline(settings: Settings | None = None, upto: str = "finetune",
                    echo: Callable[[str], None] | None = print) -> tuple[Layout, pd.DataFrame]:
    """Build (or reuse) every step up to ``upto``; returns the layout and a (step, status, seconds, log)
    table."""
    s = settings or Settings.from_env()
    if upto not in STEPS:
        raise ValueError(f"upto={upto!r}: steps are {STEPS}")
    s.workdir.mkdir(parents=True, exist_ok=True)
    results = [run_step(step, s, echo) for step in STEPS[: STEPS.index(upto) + 1]]
    return layout_of(s), pd.DataFrame([asdict(r) for r in results])


def mlflow_ui_command(root: str | Path) -> str:
    """The command that browses a pipeline root's MLflow store (``<root>/mlflow.db``)."""
    return f"mlflow ui --backend-store-uri {Layout(root=str(root)).tracking_uri()} --workers 1"
