# ruff: noqa: E402
"""Benchmark: ``ehrfm ingest mimic`` (each ``--engines``: local = polars, spark) vs ``meds_etl_mimic``
(meds-etl 0.3.11, polars backend), in one run per scale.

For each scale (1 = the MIMIC-IV demo as shipped; N > 1 = an N-times copy built once into the cache,
every hosp/icu data table replicated N times with its integer ids offset by k * 10**8 for copy k, the
dictionary tables kept once) every contender runs as a subprocess, the order reversed from one scale to the
next, while a thread samples the summed RSS of each process tree (driver + JVM + Python workers for ours
on Spark; the one process for ours local; the meds_etl process and its workers for the peer). Ratios are
ours / meds_etl per engine, for wall time and peak memory. meds-etl lives in its own venv
(``bench/.venvs/meds_etl``, created here with ``-c constraints.txt`` so nothing pulls a CUDA torch); it
wants ``<src>/2.2/{hosp,icu}`` and ``icu/chartevents.csv.gz`` (the demo lacks it: a header-only file is
written).

    .venv/bin/python bench/mimic_ingest.py --scales 1,20 --engines local,spark
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder is sys.path[0]: a sibling module named like a stdlib one (bench/tokenize.py)
# would shadow it. Drop the folder; the repository root is added instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import csv
import gzip
import io
import json
import os
import platform
import shutil
import subprocess
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))  # for the shared RSS sampler (after the stdlib-shadow cleanup)

from ingest import RssSampler  # noqa: I001  (bench/ingest.py)

VENV = REPO / "bench" / ".venvs" / "meds_etl"
PEER_PACKAGES = ["meds-etl==0.3.11", "polars<2", "psutil"]
ID_COLUMNS = frozenset({"subject_id", "hadm_id", "stay_id", "transfer_id", "labevent_id", "specimen_id",
                        "microevent_id", "micro_specimen_id", "pharmacy_id", "orderid", "linkorderid"})
OFFSET = 10**8
CHARTEVENTS_HEADER = ("subject_id,hadm_id,stay_id,caregiver_id,charttime,storetime,itemid,value,valuenum,"
                      "valueuom,warning\n")


def _header(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return next(csv.reader([f.readline()]))


def _is_dictionary(path: Path) -> bool:
    """Dictionary tables (codes, providers, caregivers) describe; copying them would duplicate codes."""
    return path.name.startswith("d_") or path.name in ("provider.csv.gz", "caregiver.csv.gz")


def replicate_table(src: Path, dst: Path, copies: int) -> int:
    """Write ``copies`` copies of one gzip CSV into ``dst`` with id columns offset; returns rows written."""
    names = _header(src)
    table = pacsv.read_csv(src, convert_options=pacsv.ConvertOptions(
        column_types={n: pa.string() for n in names}, strings_can_be_null=True))
    ids = {n: pc.cast(table.column(n), pa.int64()) for n in names if n in ID_COLUMNS}
    opts = pacsv.WriteOptions(include_header=False, quoting_style="needed")
    # gzip level 1: the bench measures the ingest, not how hard the copy was squeezed
    with gzip.open(dst, "wb", compresslevel=1) as raw:
        raw.write((",".join(names) + "\n").encode())
        for k in range(copies):
            cols = [pc.cast(pc.add(ids[n], k * OFFSET), pa.string()) if n in ids else table.column(n)
                    for n in names]
            buf = io.BytesIO()
            pacsv.write_csv(pa.Table.from_arrays(cols, names=names), buf, write_options=opts)
            raw.write(buf.getvalue())
    return int(table.num_rows) * copies


def build_copy(demo: Path, cache: Path, scale: int) -> Path:
    """``<cache>/mimic-x<scale>/2.2`` (hosp/, icu/), built once; the demo itself is linked for scale 1."""
    root = cache / f"mimic-x{scale}" / "2.2"
    done = root / ".complete"
    if done.exists():
        return root
    shutil.rmtree(root.parent, ignore_errors=True)
    for sub in ("hosp", "icu"):
        (root / sub).mkdir(parents=True)
        for src in sorted((demo / sub).glob("*.csv.gz")):
            if scale == 1 or _is_dictionary(src):
                shutil.copyfile(src, root / sub / src.name)
            else:
                replicate_table(src, root / sub / src.name, scale)
    chart = root / "icu" / "chartevents.csv.gz"
    if not chart.exists():  # meds_etl_mimic opens it unconditionally; the demo does not ship it
        with gzip.open(chart, "wt", encoding="utf-8") as f:
            f.write(CHARTEVENTS_HEADER)
    done.write_text("ok\n")
    return root


def ensure_peer_venv() -> Path:
    """The meds-etl venv (created on first use); returns its ``meds_etl_mimic`` executable."""
    exe = VENV / "bin" / "meds_etl_mimic"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "-c", str(REPO / "constraints.txt"),
                        *PEER_PACKAGES], check=True)
    return exe


def measure(cmd: list[str], log: Path) -> dict[str, Any]:
    """Run ``cmd``; wall seconds, exit code and peak RSS (MB) of its whole process tree."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        sampler = RssSampler(proc.pid)
        sampler.start()
        rc = proc.wait()
    wall = time.perf_counter() - t0
    peak = sampler.stop()
    return {"wall_s": round(wall, 2), "rc": rc, "peak_rss_mb": peak["total"], "peak_by_role_mb": peak}


def run_ours(src: Path, out: Path, log: Path, engine: str) -> dict[str, Any]:
    """``ehrfm ingest mimic --engine <engine>`` (for spark a fresh session: JVM start included, as a user
    sees it)."""
    shutil.rmtree(out, ignore_errors=True)
    res = measure([str(REPO / ".venv" / "bin" / "ehrfm"), "ingest", "mimic", "--input", str(src),
                   "--meds", str(out), "--engine", engine], log)
    summary = out / "summary.json"
    if summary.exists():
        s = json.loads(summary.read_text())
        res.update(events=s["events"], subjects=s["subjects"], rejects=s["rejects"])
    shutil.rmtree(out, ignore_errors=True)
    return res


def run_peer(exe: Path, src: Path, out: Path, log: Path, num_proc: int) -> dict[str, Any]:
    """``meds_etl_mimic --backend polars``; events and subjects counted from its output afterwards."""
    import pyarrow.parquet as pq

    shutil.rmtree(out, ignore_errors=True)
    res = measure([str(exe), str(src.parent), str(out), "--backend", "polars", "--num_proc", str(num_proc)],
                  log)
    data = sorted((out / "data").glob("**/*.parquet"))
    if data:
        res["events"] = sum(pq.ParquetFile(p).metadata.num_rows for p in data)
        res["subjects"] = len(pc.unique(pa.concat_arrays(
            [pq.read_table(p, columns=["subject_id"]).column(0).combine_chunks() for p in data])))
    shutil.rmtree(out, ignore_errors=True)
    return res


def main(argv: list[str] | None = None) -> int:
    """Build the copies, run the pairs, print a table and write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scales", default="1,20", help="comma-separated copies of the demo (1 = the demo)")
    ap.add_argument("--demo", default=str(REPO.parent / "shared" / "data" / "mimic-iv-demo"))
    ap.add_argument("--cache", default=os.environ.get("EHRFM_BENCH_CACHE", "/tmp/ehrfm-bench-cache"))
    ap.add_argument("--num-proc", type=int, default=2, help="meds_etl_mimic --num_proc")
    ap.add_argument("--engines", default="local,spark", help="comma-separated engines of ours (local, spark)")
    ap.add_argument("--output", default=str(REPO / "bench" / "results" / "mimic_ingest.json"))
    args = ap.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e]
    bad = sorted(set(engines) - {"local", "spark"})
    if bad or not engines:
        ap.error(f"--engines: expected local and/or spark, got {args.engines!r}")
    cache = Path(args.cache)
    exe = ensure_peer_venv()
    rows: list[dict[str, Any]] = []
    for i, scale in enumerate(int(s) for s in args.scales.split(",")):
        t0 = time.perf_counter()
        src = build_copy(Path(args.demo), cache, scale)
        build_s = round(time.perf_counter() - t0, 1)
        load_before = os.getloadavg()
        runs: dict[str, dict[str, Any]] = {}
        contenders = [*engines, "meds_etl"]
        order = contenders if i % 2 == 0 else contenders[::-1]  # reverse who goes first from scale to scale
        for who in order:
            out, log = cache / f"out-{who}-x{scale}", cache / f"log-{who}-x{scale}.txt"
            runs[who] = (run_peer(exe, src, out, log, args.num_proc) if who == "meds_etl"
                         else run_ours(src, out, log, who))
        peer = runs["meds_etl"]
        ratios = {e: {"time": round(runs[e]["wall_s"] / peer["wall_s"], 2),
                      "memory": round(runs[e]["peak_rss_mb"] / peer["peak_rss_mb"], 2)} for e in engines}
        rows.append({
            "scale": scale, "build_s": build_s, "order": order,
            **{f"ours_{e}": runs[e] for e in engines}, "meds_etl_polars": peer, "ratios": ratios,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        })
        r = rows[-1]
        ours = " | ".join(f"{e} {runs[e]['wall_s']} s {runs[e]['peak_rss_mb']:.0f} MB "
                          f"({runs[e].get('events')} events; time x{ratios[e]['time']} "
                          f"memory x{ratios[e]['memory']})" for e in engines)
        print(f"x{scale}: {ours} | meds_etl {peer['wall_s']} s {peer['peak_rss_mb']:.0f} MB "
              f"({peer.get('events')} events) | load {r['loadavg_before']}", flush=True)
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
              "peer": "meds_etl 0.3.11 meds_etl_mimic --backend polars", "rows": rows}
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    ok = all(r[k]["rc"] == 0 for r in rows for k in r if k.startswith("ours_") or k == "meds_etl_polars")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
