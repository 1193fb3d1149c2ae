"""Every data-prep etl/ job runs under a real ``spark-submit`` from a SHIPPED package (``--py-files ehrfm.zip``).

The venv has ``ehrfm`` installed editable (a ``__editable__`` meta-path finder, installed by a ``.pth`` file
in site-packages), so a plain ``--py-files`` run would pass even with a broken zip. To make the zip the only
source of ``ehrfm``, every Python process of the run (driver, PySpark daemon and workers) starts with a
``sitecustomize`` (on ``PYTHONPATH``; Python imports it after the ``.pth`` files) that removes the editable
finder and the repo from the import path, and logs ``pid argv`` to a file. The driver also logs, at exit,
the file ``ehrfm`` was imported from. The test then asserts that:

* each job exits 0 and writes its outputs (MEDS dataset, label tables, vocab/bins, token parquet);
* the driver imported ``ehrfm`` from ``<tmp>/dist/ehrfm.zip`` (never from the repo);
* PySpark worker processes started under the same isolation (so executor-side imports of ``ehrfm`` in
  UDFs / ``mapInPandas`` could only be satisfied by the zip Spark shipped with ``--py-files``; on this
  input the workers of these jobs did not need to import ``ehrfm`` at all, they log ``ehrfm None``);
* control: the same isolated spark-submit WITHOUT ``--py-files`` fails with "No module named 'ehrfm'",
  so the checks above can fail;
* spark-submit's ``--master`` and ``--conf`` were kept (the ingest summary records the master).

Pipeline: ``ehrfm.synth`` FHIR (40 patients) -> ingest_fhir -> label -> prepare -> tokenize_job, plus
ingest_meds (re-ingests that MEDS output) and ingest_mimic (3 MIMIC demo subjects, default rules read from
inside the zip). Not covered: etl/score.py (it
needs a trained, registered model; too slow for this budget).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from ehrfm.ingest.validate import validate_meds_dataset
from ehrfm.synth.generate import generate

REPO = Path(__file__).resolve().parents[1]
N_PATIENTS = 40
pytestmark = [pytest.mark.spark, pytest.mark.slow]

# Runs in every Python process of the spark-submit run (before any job code): no editable ehrfm, no repo.
_SITECUSTOMIZE = '''
import atexit, os, sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path_hooks[:] = [h for h in sys.path_hooks if "__editable__" not in getattr(h, "__module__", "")]
_repo = os.path.realpath(os.environ["EHRFM_TEST_REPO"])
sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != _repo]
_log = os.environ["EHRFM_TEST_ORIGIN_LOG"]
with open(_log, "a") as f:
    f.write("start %d %s\\n" % (os.getpid(), " ".join(sys.argv)))


def _origin():
    mod = sys.modules.get("ehrfm")
    with open(_log, "a") as f:
        f.write("ehrfm %d %s\\n" % (os.getpid(), getattr(mod, "__file__", None)))


atexit.register(_origin)
'''


def _build_zip(dist: Path) -> Path:
    """Zip the ehrfm/ package (sources and its YAML/JSON data files, no bytecode) as a --py-files archive."""
    dist.mkdir(parents=True, exist_ok=True)
    path = dist / "ehrfm.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in sorted((REPO / "ehrfm").rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts and f.suffix != ".pyc":
                zf.write(f, f.relative_to(REPO).as_posix())
    return path


def _isolated_env(site: Path, log: Path) -> dict[str, str]:
    """Environment for spark-submit and its Pythons: the venv, no editable ehrfm, origins logged to ``log``."""
    bindir = Path(sys.executable).parent
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYSPARK", "SPARK_"))},
        "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",  # spark-submit needs the venv's bin/
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "PYTHONPATH": str(site),  # only the isolating sitecustomize; no repo, no ehrfm
        "PYTHONNOUSERSITE": "1",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "EHRFM_TEST_REPO": str(REPO),
        "EHRFM_TEST_ORIGIN_LOG": str(log),
    }


class Submitter:
    """Runs ``spark-submit --master local[2] --conf ... --py-files <zip> etl/<job> ...`` in isolation."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.zip = _build_zip(root / "dist")
        site = root / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        bindir = Path(sys.executable).parent
        self.spark_submit = bindir / "spark-submit"
        assert self.spark_submit.exists(), f"spark-submit not found beside {sys.executable}"
        self.log = root / "origin.log"
        self.env = _isolated_env(site, self.log)

    def submit(self, job: str, *args: str, py_files: bool = True) -> subprocess.CompletedProcess[str]:
        """Run spark-submit on ``etl/<job>`` (with ``--py-files <zip>`` unless ``py_files`` is False)."""
        self.log.write_text("")
        cmd = [
            str(self.spark_submit), "--master", "local[2]",
            "--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.ui.enabled=false",
            *(["--py-files", str(self.zip)] if py_files else []), str(REPO / "etl" / job), *args,
        ]
        return subprocess.run(cmd, env=self.env, cwd=self.root, capture_output=True, text=True, timeout=600)

    def __call__(self, job: str, *args: str) -> subprocess.CompletedProcess[str]:
        """Submit ``etl/<job>`` with ``args``; asserts exit 0 and that the driver used the zip."""
        proc = self.submit(job, *args)
        assert proc.returncode == 0, f"{job} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        lines = self.log.read_text().splitlines()
        (self.root / f"origin-{job}.log").write_text("\n".join(lines))
        origins = {ln.split(" ", 2)[2] for ln in lines if ln.startswith("ehrfm ")} - {"None"}
        # the driver (and anything else that exited normally and had imported ehrfm) used the zip only
        assert origins, f"{job}: no process reported importing ehrfm: {lines}"
        assert all(o.startswith(str(self.zip) + os.sep) for o in origins), f"{job}: ehrfm not from the zip: {origins}"
        return proc

    def workers_isolated(self) -> bool:
        """True when a PySpark daemon/worker process of the last job started under the isolating sitecustomize."""
        return any(ln.startswith("start ") and "pyspark" in ln for ln in self.log.read_text().splitlines())


def _mimic_subset(src: Path, dst: Path, n_subjects: int = 3) -> None:
    """Copy patients/admissions/diagnoses_icd of the first subjects (gzip CSV, as shipped)."""
    patients = pd.read_csv(src / "hosp" / "patients.csv.gz", dtype=str)
    keep = sorted(patients.subject_id)[:n_subjects]
    (dst / "hosp").mkdir(parents=True)
    for table in ("patients", "admissions", "diagnoses_icd"):
        df = pd.read_csv(src / "hosp" / f"{table}.csv.gz", dtype=str, keep_default_na=False)
        df[df.subject_id.isin(keep)].to_csv(dst / "hosp" / f"{table}.csv.gz", index=False, compression="gzip")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, mimic_demo: Path) -> dict[str, Path]:
    """Synthetic FHIR -> ingest_fhir -> label -> prepare -> tokenize_job, each a spark-submit with --py-files.

    Also ingest_meds (re-ingesting the FHIR job's MEDS output) and ingest_mimic (3 MIMIC demo subjects).
    """
    root = tmp_path_factory.mktemp("submit_jobs")
    generate(N_PATIENTS, 7, root / "fhir", progress=False)
    submit = Submitter(root)
    out = {"root": root, "fhir": root / "fhir", "meds": root / "meds", "labels": root / "labels",
           "tokens": root / "tokens"}
    procs = {}
    procs["ingest"] = submit("ingest_fhir.py", "--input", str(out["fhir"]), "--output", str(out["meds"]),
                             "--split-ratios", "0.6,0.2,0.2")
    workers = {"ingest": submit.workers_isolated()}
    procs["label"] = submit("label.py", "--meds", str(out["meds"]), "--tasks", "all",
                            "--tasks-dir", str(REPO / "tasks"), "--output", str(out["labels"]))
    workers["label"] = submit.workers_isolated()
    procs["prepare"] = submit("prepare.py", "--meds", str(out["meds"]), "--output", str(out["tokens"]),
                              "--min-count", "1", "--n-bins", "4", "--tasks-dir", str(REPO / "tasks"))
    workers["prepare"] = submit.workers_isolated()
    procs["tokenize"] = submit("tokenize_job.py", "--meds", str(out["meds"]), "--labels", str(out["labels"]),
                               "--output", str(out["tokens"]), "--max-len", "256")
    workers["tokenize"] = submit.workers_isolated()
    out["meds2"], out["mimic"], out["mimic_meds"] = root / "meds2", root / "mimic", root / "mimic_meds"
    procs["ingest_meds"] = submit("ingest_meds.py", "--input", str(out["meds"]), "--output", str(out["meds2"]))
    _mimic_subset(mimic_demo, out["mimic"])
    # default rules: read from inside the zip through importlib.resources (see test_mimic_default_rules_from_zip)
    procs["ingest_mimic"] = submit("ingest_mimic.py", "--input", str(out["mimic"]), "--output", str(out["mimic_meds"]))
    (root / "workers.json").write_text(json.dumps(workers))
    # control: the same isolation WITHOUT --py-files must fail to import ehrfm (else the checks above prove nothing)
    bare = submit.submit("label.py", "--help", py_files=False)
    (root / "bare.json").write_text(json.dumps({"rc": bare.returncode, "output": (bare.stdout + bare.stderr)[-3000:]}))
    (root / "stdout.json").write_text(json.dumps({k: p.stdout for k, p in procs.items()}))
    return out


def test_zip_is_the_package(pipeline: dict[str, Path]) -> None:
    zf = zipfile.ZipFile(pipeline["root"] / "dist" / "ehrfm.zip")
    names = set(zf.namelist())
    assert {"ehrfm/__init__.py", "ehrfm/ingest/fhir/rules.yaml", "ehrfm/ingest/mimic/rules.yaml"} <= names
    assert not any("__pycache__" in n for n in names)


def test_workers_ran_isolated(pipeline: dict[str, Path]) -> None:
    workers = json.loads((pipeline["root"] / "workers.json").read_text())
    # at least the jobs that run Python UDFs / mapInPandas start PySpark workers; all must be isolated ones
    assert any(workers.values()), workers


def test_without_py_files_ehrfm_is_not_importable(pipeline: dict[str, Path]) -> None:
    bare = json.loads((pipeline["root"] / "bare.json").read_text())
    assert bare["rc"] != 0 and "No module named 'ehrfm'" in bare["output"], bare


def test_ingest_fhir_job(pipeline: dict[str, Path]) -> None:
    summary = json.loads((pipeline["meds"] / "summary.json").read_text())
    assert summary["subjects"] == N_PATIENTS
    assert summary["spark_master"] == "local[2]"  # get_spark kept spark-submit's master
    report = validate_meds_dataset(str(pipeline["meds"]))
    assert report.subjects == N_PATIENTS and report.events == summary["events"] > 0


def test_label_job(pipeline: dict[str, Path]) -> None:
    tasks = json.loads((pipeline["labels"] / "tasks.json").read_text())
    assert set(tasks) == {p.stem for p in (REPO / "tasks").glob("*.yaml")}
    for name in tasks:
        table = pd.read_parquet(pipeline["labels"] / f"{name}.parquet")
        assert table.subject_id.nunique() <= N_PATIENTS
    assert sum(len(pd.read_parquet(pipeline["labels"] / f"{n}.parquet")) for n in tasks) > 0


def test_prepare_job(pipeline: dict[str, Path]) -> None:
    tokens = pipeline["tokens"]
    assert (tokens / "vocab.json").is_file() and (tokens / "bins.json").is_file()
    prep = json.loads((tokens / "prepare.json").read_text())
    assert prep, "prepare.json is empty"


def test_tokenize_job(pipeline: dict[str, Path]) -> None:
    tokens = pipeline["tokens"]
    meta = json.loads((tokens / "tokenize.json").read_text())
    assert meta["config"]["max_len"] == 256 and meta["summary"]
    parquet = sorted(p for p in tokens.rglob("*.parquet"))
    assert parquet, "tokenize wrote no parquet"
    subjects: set[int] = set()
    for p in parquet:
        df = pd.read_parquet(p)
        if "subject_id" in df.columns:
            subjects |= set(df.subject_id.astype(int))
    assert 0 < len(subjects) <= N_PATIENTS


def test_ingest_meds_job(pipeline: dict[str, Path]) -> None:
    summary = json.loads((pipeline["meds2"] / "summary.json").read_text())
    first = json.loads((pipeline["meds"] / "summary.json").read_text())
    assert summary["subjects"] == N_PATIENTS and summary["events"] == first["events"]
    assert summary["spark_master"] == "local[2]"
    assert validate_meds_dataset(str(pipeline["meds2"])).subjects == N_PATIENTS


def test_ingest_mimic_job(pipeline: dict[str, Path]) -> None:
    summary = json.loads((pipeline["mimic_meds"] / "summary.json").read_text())
    assert summary["subjects"] == 3 and summary["events"] > 0 and summary["spark_master"] == "local[2]"
    assert validate_meds_dataset(str(pipeline["mimic_meds"])).subjects == 3


def test_mimic_default_rules_from_zip(tmp_path: Path) -> None:
    root = Submitter(tmp_path).root  # builds dist/ehrfm.zip and site/sitecustomize.py; no Spark here
    env = {**_isolated_env(root / "site", root / "rules.log"), "PYTHONPATH": f"{root / 'site'}{os.pathsep}{root / 'dist' / 'ehrfm.zip'}"}
    code = "import ehrfm, sys; from ehrfm.ingest.mimic.rules import load_rules; load_rules(); print(ehrfm.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ".zip" in proc.stdout
