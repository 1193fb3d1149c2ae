"""The notebooks' shared step: a small pipeline output in a work folder, built once and cached.

synth -> ingest (Spark) -> label (Spark) -> prepare -> tokenize -> pretrain -> finetune, each step running
the same ``ehrfm <stage>`` command a user would type (in a child process, so a notebook kernel does not
keep a Spark JVM or a Lightning trainer alive). A step is skipped when its marker in ``<work>/.done/``
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

STEPS = ("synth", "ingest", "label", "prepare", "tokenize", "pretrain", "finetune")
# synthetic records run 2015..2025: a fixed FHIR max-time keeps reruns identical (no "now")
MAX_TIME = "2030-01-01"
MAX_LEN = 512
# the notebooks evaluate binary and time-to-event tasks; forecasting is left out of their finetuning run
FINETUNE_TASKS = "readmission_30d,mortality_inhospital,mortality_30d_post_discharge,los_gt_7d,death_1y_tte"


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


@dataclass(frozen=True)
class Paths:
    """Where each step writes inside the work folder."""

    root: Path

    @property
    def synthetic(self) -> Path:
        """Synthetic FHIR NDJSON (and ``truth/``)."""
        return self.root / "synthetic"

    @property
    def meds(self) -> Path:
        """Ingested MEDS dataset."""
        return self.root / "meds"

    @property
    def labels(self) -> Path:
        """``<task>.parquet`` label tables."""
        return self.root / "labels"

    @property
    def tokens(self) -> Path:
        """vocab.json, bins.json, pretrain/, tasks/<task>/."""
        return self.root / "tokens"

    @property
    def pretrain(self) -> Path:
        """Pretraining run: model/, checkpoints/, mlflow.db."""
        return self.root / "pretrain"

    @property
    def finetune(self) -> Path:
        """Finetuning run: model/, predictions.parquet."""
        return self.root / "finetune"

    @property
    def truth(self) -> Path:
        """The synthetic population's planted risks (oracle rows in reports)."""
        return self.synthetic / "truth" / "index_events.parquet"

    @property
    def predictions(self) -> Path | None:
        """The finetuned model's predictions, or None when finetuning was skipped."""
        p = self.finetune / "predictions.parquet"
        return p if p.exists() else None

    @property
    def logs(self) -> Path:
        """One ``<step>.log`` per step run."""
        return self.root / "logs"


def _spark_args() -> list[str]:
    master = os.environ.get("EHRFM_SPARK_MASTER")
    return ["--master", master] if master else []


def step_command(step: str, s: Settings, p: Paths) -> tuple[list[str], list[Path]]:
    """(``ehrfm`` arguments, outputs to delete before a rerun) of one step."""
    cmds: dict[str, tuple[list[str], list[Path]]] = {
        "synth": (["synth", "--n-patients", str(s.n_patients), "--seed", str(s.seed), "--output", str(p.synthetic),
                   "--no-progress"], [p.synthetic]),
        "ingest": (["ingest", "fhir", "--input", str(p.synthetic), "--output", str(p.meds), "--max-time", MAX_TIME,
                    *_spark_args()], [p.meds]),
        "label": (["label", "--meds", str(p.meds), "--output", str(p.labels), *_spark_args()], [p.labels]),
        "prepare": (["prepare", "--meds", str(p.meds), "--output", str(p.tokens), "--engine", "local"], [p.tokens]),
        # prepare's vocab.json/bins.json live in tokens/ too: only the token rows are cleared
        "tokenize": (["tokenize", "--meds", str(p.meds), "--labels", str(p.labels), "--output", str(p.tokens),
                      "--engine", "local", "--max-len", str(MAX_LEN)], [p.tokens / "pretrain", p.tokens / "tasks"]),
        "pretrain": (["pretrain", "--data", str(p.tokens), "--output", str(p.pretrain),
                      "--set", f"trainer.max_steps={s.pretrain_steps}",
                      "--set", f"trainer.val_check_interval={max(1, min(50, s.pretrain_steps))}",
                      "--set", f"trainer.checkpoint_every_n_steps={max(1, min(50, s.pretrain_steps))}"], [p.pretrain]),
        "finetune": (["finetune", "--checkpoint", str(p.pretrain), "--data", str(p.tokens), "--output", str(p.finetune),
                      "--tasks", FINETUNE_TASKS, "--set", f"trainer.max_steps={s.finetune_steps}",
                      "--set", f"trainer.val_check_interval={max(1, min(50, s.finetune_steps))}",
                      "--set", f"trainer.checkpoint_every_n_steps={max(1, min(50, s.finetune_steps))}"], [p.finetune]),
    }
    if step not in cmds:
        raise ValueError(f"unknown pipeline step {step!r}; steps are {STEPS}")
    return cmds[step]


def _key(step: str, s: Settings) -> dict[str, object]:
    """What a step's output depends on: the settings of the steps up to it (a change reruns what follows)."""
    key: dict[str, object] = {"n_patients": s.n_patients, "seed": s.seed, "max_len": MAX_LEN, "upto": step}
    if STEPS.index(step) >= STEPS.index("pretrain"):
        key["pretrain_steps"] = s.pretrain_steps
    if step == "finetune":
        key["finetune_steps"] = s.finetune_steps
    return key


@dataclass
class StepResult:
    """One step of :func:`ensure_pipeline`."""

    step: str
    status: str  # "ran", "cached" or "skipped"
    seconds: float
    log: str | None = None


def run_step(step: str, s: Settings, echo: Callable[[str], None] | None = print) -> StepResult:
    """Run one step unless its cached output matches ``s``; raise RuntimeError (with the log's tail) on failure."""
    p = Paths(s.workdir)
    marker = s.workdir / ".done" / f"{step}.json"
    key = _key(step, s)
    if step == "finetune" and s.finetune_steps <= 0:
        return StepResult(step, "skipped", 0.0)
    if marker.exists() and json.loads(marker.read_text()) == key:
        return StepResult(step, "cached", 0.0)
    args, outputs = step_command(step, s, p)
    for out in outputs:
        shutil.rmtree(out, ignore_errors=True)
    for later in STEPS[STEPS.index(step):]:  # what follows was built from the old output
        (s.workdir / ".done" / f"{later}.json").unlink(missing_ok=True)
    p.logs.mkdir(parents=True, exist_ok=True)
    log = p.logs / f"{step}.log"
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
                    echo: Callable[[str], None] | None = print) -> tuple[Paths, pd.DataFrame]:
    """Build (or reuse) every step up to ``upto``; returns the paths and a (step, status, seconds, log) table."""
    s = settings or Settings.from_env()
    if upto not in STEPS:
        raise ValueError(f"upto={upto!r}: steps are {STEPS}")
    s.workdir.mkdir(parents=True, exist_ok=True)
    results = [run_step(step, s, echo) for step in STEPS[: STEPS.index(upto) + 1]]
    return Paths(s.workdir), pd.DataFrame([asdict(r) for r in results])


def mlflow_ui_command(run_dir: str | Path) -> str:
    """The command that browses a run folder's MLflow store (the CLIs' default ``<run>/mlflow.db``)."""
    db = Path(run_dir).resolve() / "mlflow.db"
    return f"mlflow ui --backend-store-uri sqlite:///{db} --workers 1"
