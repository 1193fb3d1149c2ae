"""FHIR mapping throughput: resources/s of the pure-Python mapper with and without FHIR-model validation,
and one-patient (serving) latency per Bundle. Prints a table and writes bench/results/fhir_ingest.json.

    .venv/bin/python -P bench/fhir_ingest.py --bundles 60   # -P: bench/tokenize.py would shadow the stdlib

Ratios are measured side by side in one process; absolute numbers depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.ingest.fhir.mapper import MapContext
from ehrfm.ingest.fhir.process import process_record
from ehrfm.ingest.fhir.records import iter_file_records

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "synthea-fhir" / "bundles"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--bundles", type=int, default=60)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fhir_ingest.json")
    args = ap.parse_args()
    files = sorted(p for p in args.data.glob("*.json.gz") if "_" in p.name)[: args.bundles]
    blobs = [(str(p), p.read_bytes()) for p in files]
    bundle_to_events(blobs[0][1])  # warm imports and the FHIR model classes

    t = time.perf_counter()
    parsed = [list(iter_file_records(name, data)) for name, data in blobs]
    parse_s = time.perf_counter() - t
    n_records = sum(len(r) for r in parsed)
    rows = []
    for validate in (False, True):
        ctx = MapContext()
        t = time.perf_counter()
        n_mapped = 0
        for recs in parsed:
            for rec in recs:
                n_mapped += process_record(rec, ctx, validate).status == "mapped"
        s = time.perf_counter() - t
        rows.append({"step": f"map, validate={'full' if validate else 'none'}", "seconds": round(s, 2),
                     "mapped_resources": n_mapped, "resources_per_s": round(n_mapped / s)})
    latencies = []
    for _, data in blobs:
        t = time.perf_counter()
        bundle_to_events(data, validate="full")
        latencies.append(time.perf_counter() - t)
    result = {
        "bundles": len(blobs), "records": n_records,
        "parse_seconds": round(parse_s, 2), "parse_records_per_s": round(n_records / parse_s),
        "map": rows,
        "serving_bundle_to_events_full_ms": {"median": round(1000 * statistics.median(latencies), 1),
                                              "max": round(1000 * max(latencies), 1)},
        "machine": (f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
                    "(shared: timings are noisy)"),
    }
    print(f"{'step':<28}{'seconds':>10}{'resources/s':>14}")
    print(f"{'gunzip + JSON + split':<28}{parse_s:>10.2f}{n_records / parse_s:>14,.0f}")
    for r in rows:
        print(f"{r['step']:<28}{r['seconds']:>10.2f}{r['resources_per_s']:>14,}")
    print("serving (bundle_to_events, validate=full): median "
          f"{result['serving_bundle_to_events_full_ms']['median']} ms per bundle; {result['machine']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
