"""Every etl/ job, scoring included, on a real Spark standalone cluster started by the test, equal to local
mode.

A master and one worker (1 core, 1 GiB) run on 127.0.0.1 from the pyspark install of the venv
(``spark-class org.apache.spark.deploy.master.Master`` / ``...deploy.worker.Worker``); each job is a
``spark-submit --master spark://127.0.0.1:<port> --py-files ehrfm.zip etl/<job>.py`` whose executor is a
separate JVM in its own working directory (the worker's ``--work-dir``). The FHIR input and every MEDS,
labels, tokens and scores folder is a ``viewfs://ehrfm/data/...`` URI (the MIMIC input a ``file://`` URI) —
a scheme only Hadoop serves, mounted (``--conf spark.hadoop.fs.viewfs.mounttable.ehrfm.link./data=...``)
onto a local folder: the drivers read and write their markers, summaries, vocab and bins through Hadoop's
FileSystem (``ehrfm.storage``) and the executors through Spark's writers, never through a driver-local path.
The worker and every Python process of the runs start without the venv's editable
``ehrfm`` (the isolating ``sitecustomize`` of ``test_spark_submit_jobs``), so the driver and the executors
can only use the shipped zip.

The chain: a small ``ehrfm.synth`` FHIR population -> ingest_fhir -> label -> prepare -> tokenize_job ->
score (a tiny random model folder, ``--source meds``), plus ingest_mimic on 3 MIMIC demo subjects with a
RELATIVE ``--meds`` (resolved on the driver, against spark-submit's working directory: never in an executor's
folder). The same stages run in local mode in this process (``ehrfm.cli.main`` on the test session) and every
output is compared: MEDS events and splits, label tables, vocab/bins, token rows, scores.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from helpers.mlflow_server import _stop as stop_group
from helpers.mlflow_server import free_port
from helpers.tiny_model import tiny_serving_dir
from test_spark_submit_jobs import _SITECUSTOMIZE, _build_zip, _isolated_env, _mimic_subset

from ehrfm.config.synth import SynthConfig
from ehrfm.layout import Layout
from ehrfm.synth.generate import generate

REPO = Path(__file__).resolve().parents[1]
N_PATIENTS = 16
TASKS = "[readmission_30d, death_1y_tte, next_visit_codes]"  # the tiny model's heads
REGISTER_TIMEOUT_S = 120
pytestmark = [pytest.mark.spark, pytest.mark.slow]


def _alive_workers(ui_port: int) -> int:
    """Workers the master's web UI reports ALIVE (0 while it is not up yet)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as r:
            return int(json.load(r).get("aliveworkers", 0))
    except OSError:
        return 0


class Cluster:
    """A standalone master + one worker on 127.0.0.1, and ``spark-submit`` to it in isolation."""

    def __init__(self, root: Path) -> None:
        import pyspark

        self.root = root
        self.home = Path(pyspark.__file__).parent  # SPARK_HOME of the pip install
        self.zip = _build_zip(root / "dist")
        site = root / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
        self.log = root / "origin.log"
        self.env = {**_isolated_env(site, self.log), "SPARK_HOME": str(self.home), "OMP_NUM_THREADS": "1"}
        self.work = root / "work"  # the executors' working folders: work/<app>/<executor>/
        self.vfs = root / "vfs"  # where viewfs://ehrfm/data/... lands
        self.vfs.mkdir()
        self.port, self.ui = free_port(), free_port()
        self.master_url = f"spark://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen[bytes]] = []

    def _start(self, name: str, *args: str) -> None:
        out = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process group
        self.procs.append(subprocess.Popen([str(self.home / "bin" / "spark-class"), *args], env=self.env,
                                           stdout=out, stderr=subprocess.STDOUT, start_new_session=True))

    def start(self) -> None:
        """Start the master and the worker; wait until the worker has registered."""
        self._start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                    "--port", str(self.port), "--webui-port", str(self.ui))
        self._start("worker", "org.apache.spark.deploy.worker.Worker", self.master_url, "--host", "127.0.0.1",
                    "--cores", "1", "--memory", "1g", "--work-dir", str(self.work),
                    "--webui-port", str(free_port()))
        deadline = time.time() + REGISTER_TIMEOUT_S
        while _alive_workers(self.ui) < 1:
            dead = [p.args[1] for p in self.procs if p.poll() is not None]  # type: ignore[index]
            if dead or time.time() > deadline:
                logs = {n: (self.root / f"{n}.log").read_text(errors="replace")[-1500:]
                        for n in ("master", "worker")}
                pytest.fail(f"standalone cluster not up after {REGISTER_TIMEOUT_S} s (exited: {dead}); "
                            f"master log: {logs['master']}\nworker log: {logs['worker']}")
            time.sleep(1)

    def stop(self) -> None:
        """Stop the worker, then the master (their whole process groups)."""
        for p in reversed(self.procs):
            stop_group(p, grace_s=15)  # the whole process group: spark-class execs a JVM

    def submit(self, job: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``spark-submit`` ``etl/<job>`` to the cluster from ``root`` (the driver's working folder), with the
        ``viewfs://ehrfm/data`` mount table onto ``root/vfs`` in the Hadoop configuration of every JVM."""
        cmd = [str(Path(sys.executable).parent / "spark-submit"), "--master", self.master_url,
               "--total-executor-cores", "1", "--executor-memory", "768m",
               "--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.ui.enabled=false",
               "--conf", f"spark.hadoop.fs.viewfs.mounttable.ehrfm.link./data={self.vfs.as_uri()}",
               "--py-files", str(self.zip), str(REPO / "etl" / job), *args]
        proc = subprocess.run(cmd, env=self.env, cwd=self.root, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, \
            f"{job} failed on the cluster:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        return proc


def _uri(p: Path) -> str:
    return p.absolute().as_uri()


def _rows(folder: Path, key: list[str]) -> list[dict[str, Any]]:
    """Every row of a parquet file or folder (hidden and ``_`` files skipped), sorted by ``key`` then the
    whole row: the comparison ignores how rows were spread over files."""
    table = pq.read_table(folder) if folder.is_file() else pq.ParquetDataset(folder).read()
    return sorted(table.to_pylist(), key=lambda r: (tuple(str(r.get(k)) for k in key), _json(r)))


def _json(row: dict[str, Any]) -> str:
    # JSON text compares NaN equal to NaN (a token row's missing values are NaN) and floats exactly
    return json.dumps(row, default=str, sort_keys=True)


def _same(got: Path, want: Path, key: list[str]) -> bool:
    """The two parquet files/folders hold the same rows, value for value (in any order, any files)."""
    return [_json(r) for r in _rows(got, key)] == [_json(r) for r in _rows(want, key)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, spark: object,
         mimic_demo: Path) -> Iterator[dict[str, Any]]:
    """The chain on the cluster (``cluster/``) and in local mode (``local/``) on the same inputs."""
    from ehrfm.cli import main

    tmp = tmp_path_factory.mktemp("cluster")
    fhir, mimic = tmp / "fhir", tmp / "mimic"
    generate(SynthConfig(n_patients=N_PATIENTS, seed=7, progress=False), fhir)
    _mimic_subset(mimic_demo, mimic)
    t0 = time.time()
    local = Layout(root=str(tmp / "local"))
    common = ["--split_ratios", "[0.6,0.2,0.2]"]
    assert main(["ingest", "fhir", "--root", local.root, "--input", f"[{fhir}]", *common]) == 0
    assert main(["label", "--root", local.root, "--tasks", TASKS]) == 0
    # Spark's prepare in local mode (the cluster's engine: bins from percentile_approx) and tokenize
    assert main(["prepare", "--root", local.root, "--min_count", "1", "--n_bins", "4", "--tasks", TASKS,
                 "--engine", "spark"]) == 0
    assert main(["tokenize", "--root", local.root, "--tokenizer.max_len", "128", "--engine", "spark"]) == 0
    # a tiny random model, vocabulary and bins fitted on these events (scores are meaningless but exact)
    model = tiny_serving_dir(pd.read_parquet(local.meds_paths.data), tmp / "model")
    assert main(["score", "--root", local.root, "--model", str(model), "--source", "meds"]) == 0
    assert main(["ingest", "mimic", "--input", str(mimic), "--meds", str(tmp / "local" / "mimic_meds")]) == 0
    local_s = time.time() - t0

    cluster = Cluster(tmp / "cluster")
    t0 = time.time()
    try:
        cluster.start()
        start_s = time.time() - t0
        shutil.copytree(fhir, cluster.vfs / "fhir")
        meds, labels, tokens, scores = (f"viewfs://ehrfm/data/{n}"
                                        for n in ("meds", "labels", "tokens", "scores"))
        procs = {
            # the FHIR input on viewfs too: the executors get its bytes through Spark's Hadoop reader
            "ingest_fhir": cluster.submit("ingest_fhir.py", "--input", "[viewfs://ehrfm/data/fhir]", "--meds",
                                          meds, *common),
            "label": cluster.submit("label.py", "--meds", meds, "--labels", labels, "--tasks", TASKS),
            "prepare": cluster.submit("prepare.py", "--meds", meds, "--tokens", tokens, "--min_count", "1",
                                      "--n_bins", "4", "--tasks", TASKS),
            "tokenize_job": cluster.submit("tokenize_job.py", "--meds", meds, "--labels", labels, "--tokens",
                                           tokens, "--tokenizer.max_len", "128"),
            "score": cluster.submit("score.py", "--model", _uri(model), "--source", "meds", "--meds", meds,
                                    "--scores", scores),
            # relative output: resolved on the driver (cwd = the cluster root), not in an executor's folder
            "ingest_mimic": cluster.submit("ingest_mimic.py", "--input", _uri(mimic), "--meds", "mimic_meds"),
        }
        cluster_s = time.time() - t0
    finally:
        cluster.stop()
    print(f"local {local_s:.0f} s; cluster start {start_s:.0f} s, jobs {cluster_s - start_s:.0f} s")
    yield {"local": tmp / "local", "cluster": cluster.vfs, "cluster_root": cluster.root, "work": cluster.work,
           "master": cluster.master_url, "procs": procs, "zip": cluster.zip, "log": cluster.log}


def test_every_job_ran_on_an_executor(runs: dict[str, Any]) -> None:
    work: Path = runs["work"]
    apps = sorted(p for p in work.iterdir() if p.is_dir())
    assert len(apps) == len(runs["procs"]), apps  # one application, with its executor, per job
    for app in apps:
        # each executor got its own copy of the shipped zip in its own working folder
        assert [e for e in app.iterdir() if (e / "stderr").is_file() and (e / runs["zip"].name).is_file()], \
            f"{app.name}: no executor ran with the shipped package"
    # the scoring executor unpacked the serving folder shipped with addFile in its own folder
    assert list(work.glob("*/*/ehrfm-serving-*/serve.json")), "the model never reached an executor"
    lines = runs["log"].read_text().splitlines()
    # the drivers imported ehrfm from the zip only; executors' Python workers started isolated (no editable
    # ehrfm: only the zip Spark shipped could give them ehrfm, and the scoring workers needed it)
    origins = {ln.split(" ", 2)[2] for ln in lines if ln.startswith("ehrfm ")} - {"None"}
    assert origins and all(o.startswith(str(runs["zip"]) + os.sep) for o in origins), origins
    assert any(ln.startswith("start ") and "pyspark" in ln for ln in lines), lines


@pytest.mark.parametrize("name", ["meds", "mimic_meds"])
def test_meds_equal(runs: dict[str, Any], name: str) -> None:
    # meds: written to viewfs://ehrfm/data/meds (lands in cluster/vfs); mimic_meds: a relative local folder
    got = Path(runs["cluster" if name == "meds" else "cluster_root"]) / name
    want = Path(runs["local"]) / name
    summary = json.loads((got / "summary.json").read_text())
    assert summary["spark_master"] == runs["master"]  # spark-submit's master was kept
    assert summary["events"] == json.loads((want / "summary.json").read_text())["events"] > 0
    key = ["subject_id", "time", "code"]
    assert _same(got / "data", want / "data", key)
    splits = "metadata/subject_splits.parquet"
    assert _same(got / splits, want / splits, ["subject_id"])


def test_relative_output_resolved_on_the_driver(runs: dict[str, Any]) -> None:
    assert (runs["cluster_root"] / "mimic_meds" / "summary.json").is_file()
    assert not [p for p in runs["work"].rglob("mimic_meds")], "relative --meds written in an executor folder"


def test_labels_equal(runs: dict[str, Any]) -> None:
    got, want = (Layout(root=str(runs[k])) for k in ("cluster", "local"))
    tasks = want.label_tasks()
    assert got.label_tasks() == tasks == sorted(TASKS.strip("[]").replace(" ", "").split(","))
    key = ["subject_id", "prediction_time"]
    assert sum(len(_rows(want.label_table(t), key)) for t in tasks) > 0
    for t in tasks:
        assert _same(got.label_table(t), want.label_table(t), key), t


def test_vocab_and_bins_equal(runs: dict[str, Any]) -> None:
    got, want = (Layout(root=str(runs[k])).token_paths for k in ("cluster", "local"))
    for f in ("vocab", "bins"):
        assert json.loads(getattr(got, f).read_text()) == json.loads(getattr(want, f).read_text()), f


def test_tokens_equal(runs: dict[str, Any]) -> None:
    got, want = (Layout(root=str(runs[k])).token_paths for k in ("cluster", "local"))
    key = ["subject_id", "task", "prediction_time"]
    folders = [want.pretrain, *sorted(want.tasks.iterdir())]
    assert len(folders) == 4
    for f in folders:
        assert _rows(f, key) and _same(got.root / f.relative_to(want.root), f, key), f.name


def test_scores_equal(runs: dict[str, Any]) -> None:
    key = ["subject_id", "task"]
    got, want = (_rows(Path(runs[k]) / "scores", key) for k in ("cluster", "local"))
    assert len(got) == len(want) == 3 * N_PATIENTS
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if k not in ("prob", "risk", "survival", "topk_probs")} == {
            k: v for k, v in w.items() if k not in ("prob", "risk", "survival", "topk_probs")}
        for col in ("prob", "risk", "survival", "topk_probs"):
            assert (g[col] is None) == (w[col] is None), col
            if g[col] is not None:
                np.testing.assert_array_equal(np.asarray(g[col], float), np.asarray(w[col], float), col)


def test_folder_options_take_file_uris(tmp_path: Path) -> None:
    """``--meds file:///x`` (and the other folder options) name the local folder, as spark-submit users
    write them; a relative folder is the driver's."""
    from ehrfm.layout import Layout

    spaced = tmp_path / "a b"
    layout = Layout(root="file://localhost/r", meds=spaced.as_uri(), labels="file:/x/y", tokens="rel/dir")
    assert layout.meds_paths.root == spaced and layout.labels_dir == Path("/x/y")
    assert layout.root_dir == Path("/r") and layout.token_paths.root == Path("rel/dir").absolute()
    assert layout.meds_uri == str(spaced)  # a local folder, whatever way it was written
    remote = Layout(root="viewfs://ehrfm/data/r/", labels="s3a://b/l")
    assert (remote.meds_uri, remote.labels_uri, remote.tokens_uri) == (
        "viewfs://ehrfm/data/r/meds", "s3a://b/l", "viewfs://ehrfm/data/r/tokens")
    from ehrfm.config.base import ConfigError

    with pytest.raises(ConfigError, match="s3a:// URI"):
        remote.labels_dir  # noqa: B018 - a Path would collapse the URI into a relative folder
