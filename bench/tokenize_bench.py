"""Benchmark: label + tokenize, Spark ``local[2]`` vs the same per-patient functions in one process.

For each size (default 10k and 50k patients) a synthetic population (``ehrfm synth``, seed 0) is generated
and ingested through the FHIR ingest into MEDS once, into a cache folder (``$EHRFM_BENCH_CACHE`` or
/tmp/ehrfm-bench-cache; reused when size and seed match; neither step is timed here — see bench/ingest.py).
The vocabulary and bins are fitted once (``ehrfm prepare``, local engine, untimed). Then, timed:

- spark: ``label_dataset`` (all tasks/*.yaml) then ``tokenize_spark`` + ``write_tokens`` on one
  ``local[2]`` session (started once, not timed; a small warm-up run first);
- direct: ``label_events`` then ``tokenize_subject`` per subject (``iter_rows``) + ``write_local`` in this
  one Python process, reading the same MEDS files.

Both write the same rows (checked: row and token counts). Prints a table and writes
bench/results/tokenize.json.

    .venv/bin/python bench/tokenize_bench.py --sizes 1000          # small
    .venv/bin/python bench/tokenize_bench.py                 # 10k and 50k
"""

from __future__ import annotations

import sys

# This file is named like the stdlib `tokenize` module; run as a script its folder is sys.path[0], where it
# would shadow the stdlib module for every later import (numpy, inspect, ...). Drop that entry first.
from pathlib import Path  # noqa: E402

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ehrfm.config.prepare import PrepareConfig  # noqa: E402
from ehrfm.config.synth import SynthConfig  # noqa: E402
from ehrfm.config.tokenize import DEFAULT_MAX_LEN  # noqa: E402
from ehrfm.labels import load_tasks  # noqa: E402
from ehrfm.labels.direct import label_events, read_meds_events  # noqa: E402
from ehrfm.layout import Layout, MedsPaths  # noqa: E402
from ehrfm.prepare.bins import load_bins  # noqa: E402
from ehrfm.schema import CODE, ENCOUNTER_ID, NUMERIC_VALUE, SUBJECT_ID, TIME  # noqa: E402
from ehrfm.tokenize import TokenizerConfig  # noqa: E402
from ehrfm.tokenize.direct import iter_rows, rows_to_table, write_local  # noqa: E402
from ehrfm.vocab import Vocabulary  # noqa: E402

TOKEN_COLUMNS = [SUBJECT_ID, TIME, CODE, NUMERIC_VALUE, ENCOUNTER_ID]


def meds_dataset(spark: Any, cache: Path, n: int, seed: int) -> Path:
    """Synthetic population of ``n`` patients ingested to MEDS (cached by size and seed)."""
    from ehrfm.ingest.fhir.spark_ingest import ingest_fhir
    from ehrfm.synth import generate

    meds = cache / f"meds_n{n}_s{seed}"
    if MedsPaths(meds).subject_splits.exists():
        return meds
    fhir = cache / f"tok_synth_n{n}_s{seed}"
    generate(SynthConfig(n_patients=n, seed=seed, patients_per_file=1000, progress=True), fhir)
    shutil.rmtree(meds, ignore_errors=True)
    ingest_fhir(spark, [str(fhir)], str(meds))
    return meds


def prepare(meds: Path, out: Path, tasks: list[str]) -> tuple[Vocabulary, Any]:
    """Fit vocab and bins once (``ehrfm prepare``, local engine, untimed)."""
    from ehrfm.prepare.stage import run

    layout = Layout(meds=str(meds), tokens=str(out))
    run(PrepareConfig(tasks=tasks, engine="local"), layout)
    return Vocabulary.load(layout.token_paths.vocab), load_bins(layout.token_paths.bins)


def _count(folder: Path) -> tuple[int, int]:
    """(rows, tokens) of all token parquet under ``folder``."""
    rows = toks = 0
    for f in folder.rglob("*.parquet"):
        t = pq.read_table(f, columns=["length"])
        rows += t.num_rows
        toks += int(sum(t.column("length").to_pylist()))
    return rows, toks


def run_spark(spark: Any, meds: Path, work: Path, specs: list[Any], vocab: Vocabulary, bins: Any,
              cfg: TokenizerConfig) -> dict[str, Any]:
    """Label + tokenize with Spark; returns timings and counts."""
    from pyspark import StorageLevel

    from ehrfm.labels.dataset import label_dataset
    from ehrfm.tokenize.spark_job import read_events_spark, read_labels_spark, tokenize_spark, write_tokens

    names = [s.name for s in specs]
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    layout = Layout(root=str(work))
    label_dataset(spark, meds, specs, layout.labels_dir)
    t1 = time.perf_counter()
    splits = spark.read.parquet(str(MedsPaths(meds).subject_splits))
    labels = read_labels_spark(spark, layout.labels_dir, names)
    rows = tokenize_spark(read_events_spark(spark, meds), labels, splits,
                          vocab, bins, cfg).persist(StorageLevel.MEMORY_AND_DISK)
    for _ in write_tokens(rows, layout.token_paths.root, names):
        pass
    rows.unpersist()
    t2 = time.perf_counter()
    n_rows, n_tok = _count(layout.token_paths.root)
    return {"label_s": t1 - t0, "tokenize_s": t2 - t1, "total_s": t2 - t0, "rows": n_rows, "tokens": n_tok}


def run_direct(meds: Path, work: Path, specs: list[Any], vocab: Vocabulary, bins: Any,
               cfg: TokenizerConfig) -> dict[str, Any]:
    """Label + tokenize in this process (the per-patient functions, no Spark)."""
    shutil.rmtree(work, ignore_errors=True)
    t0 = time.perf_counter()
    events = read_meds_events(meds, columns=TOKEN_COLUMNS)
    tables = label_events(events, specs)
    t1 = time.perf_counter()
    labels = [tab.to_pandas().assign(task=name) for name, tab in tables.items() if tab.num_rows]
    lab = pd.concat(labels, ignore_index=True) if labels else None
    sp = pq.read_table(MedsPaths(meds).subject_splits).to_pandas()
    split_of = dict(zip(sp[SUBJECT_ID].astype(int), sp["split"].astype(str), strict=True))
    table = rows_to_table(list(iter_rows(events, lab, split_of, vocab, bins, cfg)))
    tokens = Layout(root=str(work)).token_paths.root
    write_local(table, tokens, [s.name for s in specs])
    t2 = time.perf_counter()
    n_rows, n_tok = _count(tokens)
    return {"label_s": t1 - t0, "tokenize_s": t2 - t1, "total_s": t2 - t0, "rows": n_rows, "tokens": n_tok}


def _table(rows: list[dict[str, Any]]) -> str:
    head = (f"{'patients':>9} {'events':>10} {'rows':>8} {'tokens':>11} | {'engine':>7} {'label s':>8} "
            f"{'tok s':>8} {'total s':>8} {'subj/s':>8} {'tokens/s':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        for eng in ("spark", "direct"):
            e = r[eng]
            lines.append(f"{r['patients']:>9} {r['events']:>10} {e['rows']:>8} {e['tokens']:>11} | {eng:>7} "
                         f"{e['label_s']:>8.1f} {e['tokenize_s']:>8.1f} {e['total_s']:>8.1f} "
                         f"{e['subjects_per_s']:>8.0f} {e['tokens_per_s']:>10.0f}")
        lines.append(f"{'':>42} spark/direct time ratio: {r['spark_over_direct']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; prints a table and writes the JSON results."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,50000", help="comma-separated population sizes")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", default=os.environ.get("EHRFM_BENCH_CACHE", "/tmp/ehrfm-bench-cache"))
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN)
    ap.add_argument("--warmup", type=int, default=100,
                    help="patients of an untimed first Spark run; 0 = none")
    ap.add_argument("--output", default=str(REPO / "bench" / "results" / "tokenize.json"))
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1:
        ap.error("--sizes needs at least one positive size")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark workers must run this interpreter
    from ehrfm.spark import get_spark

    load_before = os.getloadavg()
    spark = get_spark("ehrfm-bench-tokenize", master=args.master)
    specs = load_tasks("all")
    tasks = [s.name for s in specs]
    cfg = TokenizerConfig(max_len=args.max_len)
    if args.warmup > 0:
        meds = meds_dataset(spark, cache, args.warmup, args.seed)
        vocab, bins = prepare(meds, cache / f"tok_work_n{args.warmup}" / "prep", tasks)
        run_spark(spark, meds, cache / f"tok_work_n{args.warmup}" / "spark", specs, vocab, bins, cfg)
    results = []
    for n in sizes:
        print(f"--- {n} patients", flush=True)
        meds = meds_dataset(spark, cache, n, args.seed)
        events = sum(pq.read_metadata(f).num_rows for f in MedsPaths(meds).data_files())
        work = cache / f"tok_work_n{n}"
        vocab, bins = prepare(meds, work / "prep", tasks)
        row: dict[str, Any] = {"patients": n, "events": events}
        row["spark"] = run_spark(spark, meds, work / "spark", specs, vocab, bins, cfg)
        row["direct"] = run_direct(meds, work / "direct", specs, vocab, bins, cfg)
        for eng in ("spark", "direct"):
            e = row[eng]
            e["subjects_per_s"] = n / e["total_s"]
            e["tokens_per_s"] = e["tokens"] / e["total_s"]
            for k in ("label_s", "tokenize_s", "total_s", "subjects_per_s", "tokens_per_s"):
                e[k] = round(e[k], 2)
        if (row["spark"]["rows"], row["spark"]["tokens"]) != (row["direct"]["rows"], row["direct"]["tokens"]):
            raise RuntimeError(f"engines disagree at {n} patients: {row['spark']} vs {row['direct']}")
        row["spark_over_direct"] = round(row["spark"]["total_s"] / row["direct"]["total_s"], 2)
        results.append(row)
    spark.stop()
    result = {
        "benchmark": "label + tokenize: Spark local vs one process (same per-patient functions)",
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "loadavg_before": [round(x, 2) for x in load_before],
                    "loadavg_after": [round(x, 2) for x in os.getloadavg()]},
        "master": args.master, "seed": args.seed, "max_len": args.max_len, "tasks": tasks, "rows": results,
        "note": "Spark session start and the warm-up run are excluded; synth, ingest and prepare are untimed."
                " Timings are noisy when the CPU is shared (see loadavg).",
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(_table(results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
