"""Benchmark: ``ehrfm label --tasks [readmission_30d]`` (local and Spark engines) vs ACES 0.7.3, paired in one
run.

For each size (default 10k and 50k patients) a synthetic population (``ehrfm synth``, seed 0) is generated and
ingested to MEDS once into a cache folder (``$EHRFM_BENCH_CACHE`` or /tmp/ehrfm-bench-cache; the same folders
bench/tokenize_bench.py uses; untimed). Then, per pair (a "pair" is one run of each contender), in an order
that rotates from pair to pair (local, spark, ACES; then spark, ACES, local; ...), each as a fresh process
timed end to end (interpreter, JVM or polars start, read, label, write), with the peak RSS of its process
tree sampled every 0.2 s:

- local: ``ehrfm label --engine local`` (polars in one process, no Spark);
- spark: ``ehrfm label --engine spark`` (Spark SQL expressions; Spark ``local[*]``);
- ACES: ``aces-cli`` on the same ``data/`` parquet with the readmission config below, in its own venv
  (bench/.cache/venvs/aces, created here: ``pip install es-aces==0.7.3 -c constraints.txt``).

Ratios per pair: local / ACES and spark / ACES. The local and spark tables must be identical, and the
reference engine (``--engine reference``: per-subject Python in ``applyInArrow``), run once per size up to
``--reference-max`` patients (it is ~15x slower), must equal them row for row. ACES' labels are compared
with ours (the local engine's) on the (subject_id, prediction_time) rows both produce (the definitions differ
at the edges: ACES cannot keep a readmission with under 30 days of follow-up after it, nor exclude a stay by a
death carrying its encounter id). ``--profile`` adds an in-process timing of each step of the Spark engine.

    .venv/bin/python bench/labels.py --sizes 1000 --pairs 1      # small check
    .venv/bin/python bench/labels.py --sizes 10000 --pairs 3     # writes bench/results/labels.json
                                                                 # (3 pairs: each contender first once)
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
from contextlib import suppress
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv" / "bin"
ACES_VENV = REPO / "bench" / ".cache" / "venvs" / "aces"
ACES_VERSION = "0.7.3"
TASK = "readmission_30d"
# readmission_30d in ACES' language: index = inpatient discharge of a living patient, prediction at the
# discharge, label = an inpatient START in (discharge, discharge + 30 d]; follow-up = an event at or after
# discharge + 30 d (our engine also keeps positives with a shorter record and counts an earlier death as
# a known negative)
ACES_CONFIG = """\
predicates:
  admission:
    code: ENCOUNTER//INPATIENT//START
  discharge:
    code: ENCOUNTER//INPATIENT//END
  death:
    code: MEDS_DEATH
trigger: discharge
windows:
  input:
    start: null
    end: trigger
    start_inclusive: true
    end_inclusive: true
    index_timestamp: end
    has:
      death: (None, 0)
  target:
    start: input.end
    end: start + 30d
    start_inclusive: false
    end_inclusive: true
    label: admission
  followup:
    start: target.end
    end: null
    start_inclusive: true
    end_inclusive: true
    has:
      _ANY_EVENT: (1, None)
"""


def meds_dataset(cache: Path, n: int, seed: int) -> Path:
    """``ehrfm synth`` + ``ehrfm ingest fhir`` of ``n`` patients, cached by size and seed (untimed)."""
    meds = cache / f"meds_n{n}_s{seed}"
    if (meds / "metadata" / "subject_splits.parquet").exists():
        return meds
    fhir = cache / f"tok_synth_n{n}_s{seed}"
    subprocess.run([str(VENV / "ehrfm"), "synth", "--synthetic", str(fhir), "--n_patients", str(n),
                    "--seed", str(seed), "--patients_per_file", "1000"], check=True)
    shutil.rmtree(meds, ignore_errors=True)
    subprocess.run([str(VENV / "ehrfm"), "ingest", "fhir", "--input", f"[{fhir}]", "--meds", str(meds)],
                   check=True)
    return meds


def aces_venv() -> Path:
    """The ACES venv (created on first use, CPU-only pins from constraints.txt); returns its aces-cli."""
    cli = ACES_VENV / "bin" / "aces-cli"
    if not cli.exists():
        subprocess.run([sys.executable, "-m", "venv", str(ACES_VENV)], check=True)
        subprocess.run([str(ACES_VENV / "bin" / "pip"), "install", "-q", f"es-aces=={ACES_VERSION}",
                        "-c", str(REPO / "constraints.txt")], check=True)
    return cli


def tree_rss_mb(root: Any) -> float:
    """Summed RSS of ``root`` (a psutil.Process) and its descendants, in MB."""
    import psutil

    total = 0
    with suppress(psutil.NoSuchProcess):
        for p in [root, *root.children(recursive=True)]:
            with suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += p.memory_info().rss
    return total / 2**20


def timed(cmd: list[str], log: Path) -> dict[str, float]:
    """Run ``cmd`` to completion; wall seconds and the peak RSS of its process tree."""
    import psutil

    t0 = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        root, peak = psutil.Process(proc.pid), 0.0
        while proc.poll() is None:
            peak = max(peak, tree_rss_mb(root))
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}; see {log}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(peak)}


def ours(meds: Path, out: Path, engine: str) -> dict[str, float]:
    """``ehrfm label --engine <engine>`` as a fresh process."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return timed([str(VENV / "ehrfm"), "label", "--meds", str(meds), "--labels", str(out / "labels"),
                  "--tasks", f"[{TASK}]", "--engine", engine], out / "log.txt")


def aces(cli: Path, meds: Path, out: Path) -> dict[str, float]:
    """``aces-cli`` on the MEDS data shards as a fresh process (one shard: single_file mode; shards named by
    their path under data/ without the suffix, ``train/0``, in either layout)."""
    sys.path.insert(0, str(REPO))
    from ehrfm.meds_files import meds_data_files

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / f"{TASK}.yaml").write_text(ACES_CONFIG)
    shards = [Path(f) for f in meds_data_files(meds)]
    if len(shards) == 1:
        data = ["data=single_file", f"data.path={shards[0]}"]
    else:
        names = ",".join(s.relative_to(meds / "data").with_suffix("").as_posix() for s in shards)
        data = ["-m", "data=sharded", f"data.root={meds / 'data'}", f"data.shard={names}"]
    return timed([str(cli), *data, "data.standard=meds", f"cohort_dir={out}", f"cohort_name={TASK}"],
                 out / "log.txt")


def agreement(ours_dir: Path, aces_dir: Path) -> dict[str, int]:
    """Rows of each, rows both produce, and how many of those carry the same label."""
    import pyarrow.parquet as pq

    mine = pq.read_table(ours_dir / "labels" / f"{TASK}.parquet").to_pandas()
    # single_file mode writes <cohort_dir>/<task>.parquet; sharded mode <cohort_dir>/<task>/<shard>.parquet
    files = sorted(aces_dir.glob(f"{TASK}*.parquet")) + sorted((aces_dir / TASK).rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no ACES labels under {aces_dir}")
    theirs = pq.read_table(files).to_pandas()
    both = mine.merge(theirs, on=["subject_id", "prediction_time"], suffixes=("", "_aces"))
    return {"ours_rows": len(mine), "aces_rows": len(theirs), "common_rows": len(both),
            "common_same_label": int((both["boolean_value"] == both["boolean_value_aces"]).sum())}


def same_tables(a: Path, b: Path) -> bool:
    """The two engines' label tables are identical (row for row, every column)."""
    sys.path.insert(0, str(REPO))
    from ehrfm.labels.direct import read_labels

    first, second = (read_labels(d / "labels" / f"{TASK}.parquet") for d in (a, b))
    return bool(first.equals(second))


def profile(meds: Path) -> dict[str, float]:
    """In-process seconds of each step of the Spark engine (one cold run, then the same steps warm)."""
    sys.path.insert(0, str(REPO))
    from pyspark.sql import functions as F

    from ehrfm.labels import load_tasks
    from ehrfm.labels.direct import dataset_codes
    from ehrfm.labels.parse import warn_missing_codes
    from ehrfm.labels.spark_engine import labels_by_task, subject_frame, task_table
    from ehrfm.layout import MedsPaths
    from ehrfm.spark import get_spark

    steps: dict[str, float] = {}
    t = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal t
        now = time.perf_counter()
        steps[name] = round(now - t, 2)
        t = now

    spark = get_spark("bench-labels")
    lap("spark_session")
    specs = load_tasks(TASK)
    warn_missing_codes(specs, dataset_codes(meds))
    lap("task_specs_and_code_check")
    for run in ("cold", "warm"):
        events = MedsPaths(meds).read_spark(spark)
        subject_frame(events, specs).select(F.sum(F.size("ev"))).collect()
        lap(f"{run}_scan_and_group_by_subject")
        by_task = labels_by_task(events, specs)
        by_task.select(F.sum(F.size(TASK))).collect()
        lap(f"{run}_scan_group_and_label")
        task_table(by_task, TASK).write.mode("overwrite").parquet(str(meds.parent / "bench_labels_profile"))
        lap(f"{run}_scan_group_label_and_write")
    spark.stop()
    return steps


CONTENDERS = ("local", "spark", "aces")


def main(argv: list[str] | None = None) -> int:
    """Run the pairs for each size; print a table; write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference-max", type=int, default=10_000,
                    help="run the reference engine once for sizes up to this many patients")
    ap.add_argument("--profile", action="store_true", help="time the Spark engine's steps in process")
    ap.add_argument("--cache", default=os.environ.get("EHRFM_BENCH_CACHE", "/tmp/ehrfm-bench-cache"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "labels.json"))
    args = ap.parse_args(argv)
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    cli = aces_venv()
    results = []
    for n in args.sizes:
        meds = meds_dataset(cache, n, args.seed)
        work = cache / f"labels_work_n{n}"
        row: dict[str, Any] = {"patients": n, "pairs": []}
        for k in range(args.pairs):
            order = CONTENDERS[k % 3:] + CONTENDERS[:k % 3]  # each contender first once every three pairs
            got = {name: (aces(cli, meds, work / "aces") if name == "aces" else ours(meds, work / name, name))
                   for name in order}
            pair = {"order": list(order), **got,
                    "ratio_local_aces": round(got["local"]["wall_s"] / got["aces"]["wall_s"], 2),
                    "ratio_spark_aces": round(got["spark"]["wall_s"] / got["aces"]["wall_s"], 2)}
            row["pairs"].append(pair)
            print(f"n={n} pair {k}: local {got['local']['wall_s']} s, spark {got['spark']['wall_s']} s, "
                  f"ACES {got['aces']['wall_s']} s: local/ACES {pair['ratio_local_aces']}x, "
                  f"spark/ACES {pair['ratio_spark_aces']}x", flush=True)
        row["agreement_with_aces"] = agreement(work / "local", work / "aces")
        row["local_equals_spark_engine"] = same_tables(work / "local", work / "spark")
        if n <= args.reference_max:
            row["reference_engine"] = ours(meds, work / "reference", "reference")
            row["reference_equals_local_engine"] = same_tables(work / "reference", work / "local")
            row["reference_equals_spark_engine"] = same_tables(work / "reference", work / "spark")
        if args.profile:
            row["profile_s"] = profile(meds)
        results.append(row)
        print(json.dumps(row, indent=1), flush=True)
    report = {"task": TASK, "aces": ACES_VERSION, "machine": f"{platform.platform()}, {os.cpu_count()} cores",
              "load_avg_at_end": os.getloadavg(), "results": results,
              "note": "wall time of fresh processes, order rotated per pair; ratio_<engine>_aces = that "
                      "engine / ACES per pair"}
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
