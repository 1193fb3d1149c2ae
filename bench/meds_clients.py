"""Benchmark / compatibility check: do the MEDS ecosystem's own tools accept ehrfm's output unchanged?

Runs, on one ehrfm MEDS dataset and its label tables, each tool's documented command line in that tool's own
environment, and records per step: exit status, wall seconds, and what the tool produced. The tools:

- **MEDS-Tab 0.2** (``meds-tab``, polars + XGBoost; too heavy for the CI install — it pulls XGBoost and a
  350 MB NCCL wheel): ``meds-tab-describe`` → ``meds-tab-tabularize-static`` →
  ``meds-tab-tabularize-time-series`` → ``meds-tab-cache-task`` (with our label table) →
  ``meds-tab-model`` (XGBoost, a 2-trial sweep). It reads ``data/<split>/<n>.parquet`` and a folder of label
  files; we point ``input_label_dir`` at a folder holding a link to the task's ``<task>.parquet`` (our label
  folder holds every task's file side by side, and MEDS-Tab globs every parquet file under that folder).
  Venv: ``bench/.cache/venvs/meds_tab`` (created here: ``pip install meds-tab==0.2.0 -c constraints.txt``).
- **ACES**, **meds_reader** and ``meds`` schema validation run in the test suite (they install with our pins);
  this script repeats them so that one JSON file answers "which MEDS tools accept our output".

Input: ``--meds`` (an ehrfm MEDS folder) and ``--labels`` (its label folder) — by default the MIMIC-IV demo is
ingested and labelled into ``$EHRFM_BENCH_CACHE/meds-clients`` (or /tmp/ehrfm-bench-cache) first (untimed).

    .venv/bin/python bench/meds_clients.py                 # writes bench/results/meds_clients.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv" / "bin"
MEDS_TAB_VENV = REPO / "bench" / ".cache" / "venvs" / "meds_tab"
MEDS_TAB_VERSION = "0.2.0"
MIMIC_DEMO = REPO.parent / "shared" / "data" / "mimic-iv-demo"
TASK = "readmission_30d"


def _cache() -> Path:
    return Path(os.environ.get("EHRFM_BENCH_CACHE", "/tmp/ehrfm-bench-cache"))


def ensure_venv(venv: Path, requirement: str) -> Path:
    """A venv at ``venv`` with ``requirement`` installed (pinned by constraints.txt); returns its bin/."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    if subprocess.run([str(venv / "bin" / "python"), "-c", "import MEDS_tabular_automl"],
                      capture_output=True).returncode != 0:
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-c", str(REPO / "constraints.txt"),
                        requirement], check=True)
    return venv / "bin"


def mimic_output(root: Path) -> tuple[Path, Path]:
    """Ingest + label the MIMIC-IV demo with ehrfm into ``root`` once; returns (meds, labels) folders."""
    meds, labels = root / "meds", root / "labels"
    if not (meds / "summary.json").exists():
        subprocess.run([str(VENV / "ehrfm"), "ingest", "mimic", "--input", str(MIMIC_DEMO),
                        "--root", str(root), "--overwrite", "true"], check=True)
    if not (labels / "summary.json").exists():
        subprocess.run([str(VENV / "ehrfm"), "label", "--root", str(root), "--tasks",
                        "[readmission_30d,mortality_inhospital]", "--overwrite", "true"], check=True)
    return meds, labels


def _step(name: str, cmd: list[str], cwd: Path, log: Path) -> dict[str, Any]:
    """Run one tool command; record its status, seconds and the tail of its output."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
    print(f"  {name}: exit {proc.returncode} in {seconds:.1f} s")
    return {"step": name, "ok": proc.returncode == 0, "exit": proc.returncode, "seconds": round(seconds, 2),
            "tail": tail if proc.returncode else []}


def run_meds_tab(meds: Path, labels: Path, work: Path, task: str) -> dict[str, Any]:
    """MEDS-Tab's five documented steps on our dataset and one task's label file."""
    bin_dir = ensure_venv(MEDS_TAB_VENV, f"meds-tab=={MEDS_TAB_VERSION}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    task_labels = work / "labels" / task
    task_labels.mkdir(parents=True)
    (task_labels / f"{task}.parquet").symlink_to(labels / f"{task}.parquet")
    out, data = work / "tab", meds / "data"
    # a fresh work folder each run: do_overwrite=True would make tabularize clear describe's codes.parquet
    common = [f"input_dir={data}", f"output_dir={out}",
              "tabularization.min_code_inclusion_count=1",
              "tabularization.window_sizes=[30d,365d,full]",
              "tabularization.aggs=[static/present,code/count,value/count,value/sum,value/min,value/max]"]
    log = work / "meds_tab.log"
    steps = [
        ("describe", [str(bin_dir / "meds-tab-describe"), f"input_dir={data}", f"output_dir={out}"]),
        ("tabularize-static", [str(bin_dir / "meds-tab-tabularize-static"), *common]),
        ("tabularize-time-series", [str(bin_dir / "meds-tab-tabularize-time-series"), *common]),
        ("cache-task", [str(bin_dir / "meds-tab-cache-task"), *common, f"input_label_dir={task_labels}",
                        f"task_name={task}"]),
        ("model-xgboost", [str(bin_dir / "meds-tab-model"), "--multirun", "model_launcher=xgboost", *common,
                           f"task_name={task}", f"output_model_dir={work / 'model'}",
                           "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=1"]),
    ]
    results = []
    for name, cmd in steps:
        r = _step(name, cmd, work, log)
        results.append(r)
        if not r["ok"]:
            break
    npz = sorted(str(p.relative_to(out)) for p in out.rglob("*.npz")) if out.exists() else []
    return {"tool": "meds-tab", "version": MEDS_TAB_VERSION, "task": task,
            "ok": all(r["ok"] for r in results) and len(results) == len(steps), "steps": results,
            "tabularized_files": len(npz), "log": str(log)}


def run_in_process_clients(meds: Path, labels: Path, work: Path) -> list[dict[str, Any]]:
    """meds schema validation of data and labels, and meds_reader convert + read (both in our .venv)."""
    code = f"""
import json, sys, glob
import pyarrow.parquet as pq
from meds import DataSchema, LabelSchema
out = {{}}
files = sorted(glob.glob({str(meds / 'data')!r} + '/**/*.parquet', recursive=True))
for f in files:
    DataSchema.validate(pq.read_table(f))
out['data_files'] = len(files)
labs = sorted(p for p in glob.glob({str(labels)!r} + '/*.parquet') if p.count('.') == 1)
for f in labs:
    LabelSchema.validate(pq.read_table(f))
out['label_files'] = len(labs)
print(json.dumps(out))
"""
    res = []
    t0 = time.perf_counter()
    proc = subprocess.run([str(VENV / "python"), "-c", code], capture_output=True, text=True)
    res.append({"tool": "meds (DataSchema, LabelSchema)", "ok": proc.returncode == 0,
                "seconds": round(time.perf_counter() - t0, 2),
                "detail": json.loads(proc.stdout) if proc.returncode == 0 else proc.stderr[-2000:]})
    db = work / "meds_reader_db"
    if db.exists():
        shutil.rmtree(db)
    t0 = time.perf_counter()
    conv = subprocess.run([str(VENV / "meds_reader_convert"), str(meds), str(db), "--num_threads", "2"],
                          capture_output=True, text=True)
    ok = conv.returncode == 0
    detail: Any = conv.stderr[-2000:]
    if ok:
        read = subprocess.run([str(VENV / "python"), "-c", (
            "import meds_reader, json, sys\n"
            f"db = meds_reader.SubjectDatabase({str(db)!r})\n"
            "n = sum(len(e) for s in db for e in [db[s].events])\n"
            "print(json.dumps({'subjects': len(db), 'events': n}))")], capture_output=True, text=True)
        ok = read.returncode == 0
        detail = json.loads(read.stdout) if ok else read.stderr[-2000:]
    res.append({"tool": "meds_reader", "ok": ok, "seconds": round(time.perf_counter() - t0, 2),
                "detail": detail})
    return res


def main(argv: list[str] | None = None) -> None:
    """Run every client on one ehrfm output and write bench/results/meds_clients.json."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--meds", type=Path, help="an ehrfm MEDS folder (default: the MIMIC-IV demo, ingested)")
    ap.add_argument("--labels", type=Path, help="its label folder (default: labelled here)")
    ap.add_argument("--task", default=TASK)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "meds_clients.json")
    args = ap.parse_args(argv)
    root = _cache() / "meds-clients"
    if args.meds is None:
        meds, labels = mimic_output(root)
    else:
        meds, labels = args.meds, args.labels or args.meds.parent / "labels"
    work = root / "work"
    work.mkdir(parents=True, exist_ok=True)
    print(f"MEDS clients on {meds} (labels {labels})")
    results = run_in_process_clients(meds, labels, work)
    results.append(run_meds_tab(meds, labels, work / "meds_tab", args.task))
    summary = json.loads((meds / "summary.json").read_text())
    report = {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "python": platform.python_version()},
        "dataset": {"meds": str(meds), "events": summary.get("events"), "subjects": summary.get("subjects"),
                    "shards": [s.get("file") for s in summary.get("shards", [])]},
        "clients": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"{'tool':34} ok    seconds")
    for r in results:
        seconds = r.get("seconds", sum(s["seconds"] for s in r.get("steps", [])))
        print(f"{r['tool']:34} {str(r['ok']):5} {seconds:.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
