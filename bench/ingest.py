# ruff: noqa: E402
"""Benchmark: FHIR ingest, Spark (``ingest_fhir``) and local (``ingest_fhir_local``), on synthetic data.

For each size (default 1k, 10k, 50k patients) a population is generated once into a cache folder
(``$EHRFM_BENCH_CACHE`` or /tmp/ehrfm-bench-cache; reused when seed and size match), then:

- floor: read every NDJSON line and ``json.loads`` it in this one Python process (no mapping, no Spark);
- ingest, per engine of ``--engines`` (default both, one after the other on the same files):
  ``ingest_fhir(spark, [folder], out)`` on one ``local[2]`` session (started once, not timed) and
  ``ingest_fhir_local([folder], out)`` (a process per core, no JVM), while a thread samples the RSS of this
  process tree (Python driver + JVM + Python workers).

Prints a table and writes bench/results/ingest.json. Ratios are measured side by side in one run.

    .venv/bin/python bench/ingest.py --sizes 1000,10000
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this folder is sys.path[0]: a sibling module named like a stdlib one (bench/tokenize.py)
# would shadow it for every import below. Drop the folder; the repository root is added instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import argparse
import json
import math
import os
import platform
import shutil
import threading
import time
from typing import Any

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ehrfm.synth import SynthConfig, generate
from ehrfm.synth.generate import SUMMARY_FILE, population_files


class RssSampler(threading.Thread):
    """Samples the summed RSS of a process and all its descendants every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak: dict[str, float] = {"total": 0.0, "python_driver": 0.0, "jvm": 0.0, "python_workers": 0.0}
        self._stop_event = threading.Event()

    def sample(self) -> None:
        """One sample: RSS in MB by role (JVM = java processes; workers = other descendants)."""
        parts = {"python_driver": self.root.memory_info().rss, "jvm": 0, "python_workers": 0}
        for child in self.root.children(recursive=True):
            try:
                rss = child.memory_info().rss
                role = "jvm" if "java" in child.name().lower() else "python_workers"
            except psutil.Error:  # exited between listing and reading
                continue
            parts[role] += rss
        mb = {k: v / 2**20 for k, v in parts.items()}
        mb["total"] = sum(mb.values())
        for k, v in mb.items():
            self.peak[k] = max(self.peak[k], v)

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.interval)

    def stop(self) -> dict[str, float]:
        """Stop sampling; returns the peaks (MB; each role's own peak, ``total`` the peak of the sum)."""
        self._stop_event.set()
        self.join()
        return {k: round(v, 1) for k, v in self.peak.items()}


def population(cache: Path, n: int, seed: int, per_file: int) -> tuple[Path, float | None]:
    """The cached population folder for (n, seed, per_file), generated when missing; returns
    (folder, generation seconds or None when reused)."""
    folder = cache / f"synth_n{n}_s{seed}_f{per_file}"
    summary = folder / SUMMARY_FILE
    if summary.exists():
        meta = (yaml.safe_load(summary.read_text()) or {}).get("config") or {}
        if (meta.get("n_patients"), meta.get("seed"), meta.get("patients_per_file")) == (n, seed, per_file):
            return folder, None
    t0 = time.perf_counter()
    generate(SynthConfig(n_patients=n, seed=seed, patients_per_file=per_file), folder)
    return folder, time.perf_counter() - t0


def floor(folder: Path) -> tuple[int, float]:
    """Read and JSON-parse every resource of the population in one process: (resources, seconds)."""
    t0 = time.perf_counter()
    n = 0
    for path in population_files(folder):
        with open(path, encoding="utf-8") as f:
            for line in f:
                json.loads(line)
                n += 1
    return n, time.perf_counter() - t0


def _ingest_fn(engine: str) -> Any:
    """The ingest function of ``engine``: ``ingest_fhir(spark, inputs, out, ...)`` or, for ``local``,
    ``ingest_fhir_local(inputs, out, ...)`` wrapped to the same call."""
    if engine == "local":
        from ehrfm.ingest.fhir.local_ingest import ingest_fhir_local

        return lambda _spark, inputs, out, **kw: ingest_fhir_local(inputs, out, **kw)
    from ehrfm.ingest.fhir.spark_ingest import ingest_fhir

    return ingest_fhir


def run_size(spark: Any, cache: Path, n: int, seed: int, validate: str, per_file: int,
             engine: str = "spark", floored: tuple[int, float] | None = None) -> dict[str, Any]:
    """Generate (or reuse), measure the floor (unless ``floored`` gives it) and the ingest with ``engine``
    (spark | local) for one population size."""
    ingest_fhir = _ingest_fn(engine)
    folder, gen_s = population(cache, n, seed, per_file)
    files = population_files(folder)
    size_mb = sum(p.stat().st_size for p in files) / 2**20
    resources, floor_s = floored or floor(folder)
    out = cache / f"ingest_out_n{n}"
    shutil.rmtree(out, ignore_errors=True)
    sampler = RssSampler(os.getpid())
    sampler.start()
    t0 = time.perf_counter()
    summary = ingest_fhir(spark, [str(folder)], str(out), validate=validate)
    ingest_s = time.perf_counter() - t0
    peak = sampler.stop()
    if engine == "local":  # the paired run's Spark session idles beside the local engine: not its memory
        peak = {**peak, "total": round(peak["total"] - peak["jvm"], 1), "jvm": 0.0}
    shutil.rmtree(out, ignore_errors=True)
    events = int(summary.get("events", 0))
    return {
        "engine": engine, "patients": n, "files": len(files), "resources": resources,
        "input_mb": round(size_mb, 1), "events": events,
        "rejects": summary.get("rejects"), "generate_s": None if gen_s is None else round(gen_s, 2),
        "floor_s": round(floor_s, 2), "floor_resources_per_s": round(resources / floor_s),
        "ingest_s": round(ingest_s, 2), "events_per_s": round(events / ingest_s),
        "resources_per_s": round(resources / ingest_s), "ratio_to_floor": round(ingest_s / floor_s, 2),
        "peak_rss_mb": peak, "stages_s": summary.get("seconds"),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints a table and writes the JSON results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,10000,50000", help="comma-separated population sizes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=os.environ.get("EHRFM_BENCH_CACHE", "/tmp/ehrfm-bench-cache"))
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--engines", default="spark,local",
                    help="comma-separated: spark (ingest_fhir on --master) and/or local (ingest_fhir_local, "
                         "a process per core); both run on the same population, after one floor measurement")
    ap.add_argument("--validate", default="auto", help="ingest_fhir validate= (auto | full | none)")
    ap.add_argument("--output", default=str(REPO / "bench" / "results" / "ingest.json"))
    ap.add_argument("--patients-per-file", type=int, default=1000,
                    help="shard size of the NDJSON files (bulk-export style; 0 = one file per resource type)")
    ap.add_argument("--warmup", type=int, default=100,
                    help="patients of an untimed first ingest (JVM/JIT and worker warm-up); 0 = none")
    args = ap.parse_args(argv)
    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        ap.error(f"--sizes must be comma-separated integers, got {args.sizes!r}")
    if not sizes or min(sizes) < 1:
        ap.error("--sizes needs at least one positive size")
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    if not engines or any(e not in ("spark", "local") for e in engines):
        ap.error(f"--engines must name spark and/or local, got {args.engines!r}")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    # Spark's Python workers must run this interpreter (the venv), not whatever `python` is on PATH
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    load_before = os.getloadavg()
    spark, startup_s = None, None
    if "spark" in engines:
        from ehrfm.spark import get_spark

        t0 = time.perf_counter()
        spark = get_spark("ehrfm-bench-ingest", master=args.master)
        startup_s = time.perf_counter() - t0
    warmup_s: dict[str, float] = {}
    if args.warmup > 0:
        print(f"--- warm-up: {args.warmup} patients (not reported)", flush=True)
        for engine in engines:
            warmup_s[engine] = run_size(spark, cache, args.warmup, args.seed, args.validate,
                                        args.patients_per_file, engine)["ingest_s"]
    rows = []
    for n in sizes:
        floored = floor(population(cache, n, args.seed, args.patients_per_file)[0])
        for engine in engines:
            print(f"--- {n} patients, engine {engine}", flush=True)
            rows.append(run_size(spark, cache, n, args.seed, args.validate, args.patients_per_file, engine,
                                 floored))
    if spark is not None:
        spark.stop()
    scaling = [x for e in engines for x in _scaling([r for r in rows if r["engine"] == e])]
    result = {
        "benchmark": "ingest_fhir on synthetic FHIR NDJSON",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "master": args.master, "validate": args.validate, "seed": args.seed,
        "patients_per_file": args.patients_per_file,
        "engines": engines, "spark_startup_s": None if startup_s is None else round(startup_s, 2),
        "warmup_patients": args.warmup, "warmup_ingest_s": warmup_s,
        "rows": rows, "scaling": scaling,
        "note": "floor = read + json.loads of the same files in one Python process;"
                " ratio = ingest_s / floor_s."
                " Timings are noisy when the CPU is shared (see loadavg).",
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(_table(rows))
    for s in scaling:
        print(f"scaling ({s['engine']}) {s['from']} -> {s['to']} patients: time x{s['time_ratio']}"
              f" for data x{s['size_ratio']} (exponent {s['exponent']}; 1.0 = linear)")
    print(f"spark startup {startup_s or 0:.1f} s; load average before {load_before[0]:.1f}; wrote {out}")
    return 0


def _scaling(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Time growth between consecutive sizes; the exponent is log(time ratio) / log(event ratio)."""
    out = []
    for a, b in zip(rows, rows[1:], strict=False):
        if b["events"] > a["events"] > 0:
            tr, sr = b["ingest_s"] / a["ingest_s"], b["events"] / a["events"]
            out.append({"engine": a["engine"], "from": a["patients"], "to": b["patients"],
                        "time_ratio": round(tr, 2), "size_ratio": round(sr, 2),
                        "exponent": round(math.log(tr) / math.log(sr), 2)})
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'engine':>6} {'patients':>9} {'files':>6} {'resources':>10} {'MB':>7} {'events':>10}"
            f" {'floor s':>8} {'ingest s':>9} {'events/s':>9} {'x floor':>8} {'peak RSS MB':>12}"
            f" {'(jvm/drv/workers)':>19}")
    lines = [head, "-" * len(head)]
    for r in rows:
        p = r["peak_rss_mb"]
        lines.append(
            f"{r['engine']:>6} {r['patients']:>9} {r['files']:>6} {r['resources']:>10} {r['input_mb']:>7.0f}"
            f" {r['events']:>10}"
            f" {r['floor_s']:>8.1f} {r['ingest_s']:>9.1f} {r['events_per_s']:>9} {r['ratio_to_floor']:>8.1f}"
            f" {p['total']:>12.0f}"
            f" {p['jvm']:>7.0f}/{p['python_driver']:.0f}/{p['python_workers']:.0f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
