"""Every data-prep etl/ job runs under a real ``spark-submit`` from a SHIPPED package
(``--py-files ehrfm.zip``).

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

Pipeline (one pipeline root, ``--root``): ``ehrfm.synth`` FHIR (40 patients) -> ingest_fhir -> label ->
prepare -> tokenize_job, plus ingest_meds (re-ingests that MEDS output) and ingest_mimic (3 MIMIC demo
subjects). Package data is read from inside the zip: the default FHIR/MIMIC rules and the task
specifications (label and prepare run without ``--tasks_dir``). Not covered: etl/score.py (it needs a trained,
registered model; too slow for this budget).
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

from ehrfm.config.synth import SynthConfig
from ehrfm.ingest.validate import validate_meds_dataset
from ehrfm.labels.parse import available_tasks
from ehrfm.layout import Layout
from ehrfm.synth.generate import generate
from ehrfm.tokenize import read_tokenizer_config

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
    """Environment for spark-submit and its Pythons: the venv, no editable ehrfm, origins logged to
    ``log``."""
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
        assert all(o.startswith(str(self.zip) + os.sep) for o in origins), \
            f"{job}: ehrfm not from the zip: {origins}"
        return proc

    def workers_isolated(self) -> bool:
        """True when a PySpark daemon/worker process of the last job started under the isolating
        sitecustomize."""
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
    generate(SynthConfig(n_patients=N_PATIENTS, seed=7, progress=False), root / "fhir")
    submit = Submitter(root)
    layout = Layout(root=str(root))
    out = {"root": root, "fhir": root / "fhir", "meds": layout.meds_paths.root, "labels": layout.labels_dir,
           "tokens": layout.token_paths.root}
    at_root = ["--root", str(root)]
    procs = {}
    procs["ingest"] = submit("ingest_fhir.py", *at_root, "--input", f"[{out['fhir']}]",
                             "--split_ratios", "[0.6,0.2,0.2]")
    workers = {"ingest": submit.workers_isolated()}
    # no --tasks_dir: every task specification packaged in the zip (copied out by ehrfm.resources)
    procs["label"] = submit("label.py", *at_root)
    workers["label"] = submit.workers_isolated()
    procs["prepare"] = submit("prepare.py", *at_root, "--min_count", "1", "--n_bins", "4")
    workers["prepare"] = submit.workers_isolated()
    procs["tokenize"] = submit("tokenize_job.py", *at_root, "--tokenizer.max_len", "256")
    workers["tokenize"] = submit.workers_isolated()
    out["meds2"], out["mimic"], out["mimic_meds"] = root / "meds2", root / "mimic", root / "mimic_meds"
    procs["ingest_meds"] = submit("ingest_meds.py", "--input", str(out["meds"]), "--meds", str(out["meds2"]))
    _mimic_subset(mimic_demo, out["mimic"])
    # default rules: read from inside the zip through importlib.resources (test_package_data_from_zip)
    procs["ingest_mimic"] = submit("ingest_mimic.py", "--input", str(out["mimic"]),
                                   "--meds", str(out["mimic_meds"]))
    (root / "workers.json").write_text(json.dumps(workers))
    # control: the same isolation WITHOUT --py-files must fail to import ehrfm (else the checks above prove
    # nothing)
    bare = submit.submit("label.py", "--help", py_files=False)
    bare_out = (bare.stdout + bare.stderr)[-3000:]
    (root / "bare.json").write_text(json.dumps({"rc": bare.returncode, "output": bare_out}))
    (root / "stdout.json").write_text(json.dumps({k: p.stdout for k, p in procs.items()}))
    return out


def test_zip_is_the_package(pipeline: dict[str, Path]) -> None:
    zf = zipfile.ZipFile(pipeline["root"] / "dist" / "ehrfm.zip")
    names = set(zf.namelist())
    assert {"ehrfm/__init__.py", "ehrfm/ingest/fhir/rules.yaml", "ehrfm/ingest/mimic/rules.yaml"} <= names
    assert {f"ehrfm/tasks/{t}.yaml" for t in available_tasks()} <= names
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
    layout = Layout(root=str(pipeline["root"]))
    tasks = json.loads(layout.label_kinds.read_text())
    assert sorted(tasks) == available_tasks() == layout.label_tasks()  # the packaged specs, read from the zip
    for name in tasks:
        table = pd.read_parquet(layout.label_table(name))
        assert table.subject_id.nunique() <= N_PATIENTS
    assert sum(len(pd.read_parquet(layout.label_table(n))) for n in tasks) > 0


def test_prepare_job(pipeline: dict[str, Path]) -> None:
    tokens = Layout(root=str(pipeline["root"])).token_paths
    assert tokens.vocab.is_file() and tokens.bins.is_file()
    prep = json.loads(tokens.prepare_json.read_text())
    assert prep["config"]["min_count"] == 1 and prep["config"]["n_bins"] == 4
    assert prep["summary"]["tasks"] == available_tasks()  # prompt tokens of the packaged task specs


def test_tokenize_job(pipeline: dict[str, Path]) -> None:
    tokens = Layout(root=str(pipeline["root"])).token_paths
    assert read_tokenizer_config(tokens.root).max_len == 256
    summary = json.loads(tokens.meta.read_text())["summary"]
    assert summary["pretrain"] and summary["n_rows"] > 0 and summary["tasks"] == available_tasks()
    assert tokens.pretrain.is_dir() and all(tokens.task(t).is_dir() for t in summary["tasks"])
    parquet = sorted(p for p in tokens.root.rglob("*.parquet"))
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


def test_package_data_from_zip(tmp_path: Path) -> None:
    root = Submitter(tmp_path).root  # builds dist/ehrfm.zip and site/sitecustomize.py; no Spark here
    env = {**_isolated_env(root / "site", root / "rules.log"),
           "PYTHONPATH": f"{root / 'site'}{os.pathsep}{root / 'dist' / 'ehrfm.zip'}"}
    code = ("import ehrfm, sys; from ehrfm.ingest.mimic.rules import load_rules; load_rules(); "
            "from ehrfm.labels.parse import available_tasks, load_tasks; "
            "print(ehrfm.__file__); print(len(load_tasks(available_tasks())))")
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    origin, n_tasks = proc.stdout.split()[-2:]
    assert ".zip" in origin
    assert int(n_tasks) == len(available_tasks())  # the packaged task specs, copied out of the zip
