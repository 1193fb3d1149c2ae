"""Serving latency per patient: in-process pyfunc ``predict`` vs HTTP (``mlflow models serve``), for short
(~100 events) and long (~5k events) histories. Prints a table, writes ``bench/results/serve.json``.

    .venv/bin/python bench/serve.py [--short-n 20] [--long-n 5] [--long-events 5000]

Model: the tiny preset (mamba, d_model 64, 2 layers), randomly initialised (latency does not depend on
training), registered in a temporary sqlite store. Inputs are real Synthea R4 bundles; the largest single
Synthea patient here maps to ~1.2k events, so the "long" history merges several of the largest bundles
under one Patient (references rewritten) until it reaches ``--long-events``. Each request carries ONE
patient; the time includes JSON parsing, FHIR validation, mapping, tokenization, the model and the
RiskAssessment output. The model sees the most recent ``max_len`` (512) tokens.
Timings on a shared, loaded CPU are noisy: the load average is recorded beside them.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import os
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# bench/ holds scripts named like stdlib modules: keep this folder off the import path
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
# the tiny model and the server runner are test helpers (tests/helpers)
sys.path.insert(0, str(ROOT / "tests"))
DATA = Path(os.environ.get("EHRFM_SHARED_DATA", ROOT.parent / "shared" / "data")) / "synthea-fhir"


def _manifest() -> list[dict[str, str]]:
    with open(DATA / "MANIFEST.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["patient_id"]]
    return sorted(rows, key=lambda r: int(r["json_bytes"]))


def _text(row: dict[str, str]) -> str:
    return gzip.open(DATA / row["file"]).read().decode("utf-8")


def _n_events(text: str) -> int:
    from ehrfm.ingest.fhir.bundle import bundle_to_events

    return bundle_to_events(text, validate="none").events.num_rows


def short_bundles(k: int, lo: int = 85, hi: int = 140) -> list[tuple[str, int]]:
    """``k`` real bundles whose events number in [lo, hi] (searched from the small end)."""
    out = []
    for row in _manifest():
        text = _text(row)
        n = _n_events(text)
        if lo <= n <= hi:
            out.append((text, n))
            if len(out) == k:
                break
    return out


def long_bundle(target: int) -> tuple[str, int]:
    """The largest bundle plus the clinical entries of the next largest ones, re-pointed at its Patient."""
    rows = _manifest()[::-1]
    base = json.loads(_text(rows[0]))
    pat = next(e for e in base["entry"] if e["resource"]["resourceType"] == "Patient")
    pid = pat["resource"]["id"]
    n = _n_events(json.dumps(base))
    for row in rows[1:]:
        if n >= target:
            break
        other = json.loads(_text(row))
        op = next(e for e in other["entry"] if e["resource"]["resourceType"] == "Patient")["resource"]["id"]
        moved = json.loads(
            json.dumps([e for e in other["entry"] if e["resource"]["resourceType"] != "Patient"])
                           .replace(op, pid))
        base["entry"].extend(moved)
        n = _n_events(json.dumps(base))
    return json.dumps(base), n


def _percentiles(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {"n": len(a), "p50_ms": round(float(np.percentile(a, 50)), 1),
            "p99_ms": round(float(np.percentile(a, 99)), 1),
            "mean_ms": round(float(a.mean()), 1)}


def time_calls(call: Any, payloads: list[str], n: int) -> list[float]:
    """Wall time (ms) of ``n`` calls cycling through ``payloads`` (one patient each), after one warm-up."""
    call(payloads[0])
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        call(payloads[i % len(payloads)])
        out.append((time.perf_counter() - t0) * 1000)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table; write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--short-n", type=int, default=20)
    ap.add_argument("--long-n", type=int, default=5)
    ap.add_argument("--long-events", type=int, default=5000)
    ap.add_argument("--output", default=str(ROOT / "bench" / "results" / "serve.json"))
    args = ap.parse_args(argv)

    import mlflow
    import pandas as pd
    import torch
    from helpers.mlflow_server import serve
    from helpers.tiny_model import tiny_finetuned

    from ehrfm.ingest.fhir.bundle import bundle_to_events
    from ehrfm.serve.register import register

    torch.set_num_threads(1)
    shorts = short_bundles(5)
    long_text, long_n = long_bundle(args.long_events)
    sizes = {"short": (int(np.mean([n for _, n in shorts])), [t for t, _ in shorts]),
             "long": (long_n, [long_text])}
    reps = {"short": args.short_n, "long": args.long_n}
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        events = pd.concat([bundle_to_events(t, validate="none").events_df()
                            for t in sizes["short"][1] + [long_text]])
        ft = tiny_finetuned(events, Path(tmp) / "finetuned", d_model=64, n_layers=2)
        reg = register(ft, "ehrfm", "champion", store_dir=tmp)
        mlflow.set_tracking_uri(reg.tracking_uri)
        model = mlflow.pyfunc.load_model(reg.serve_uri)

        def in_process(text: str) -> None:
            model.predict(pd.DataFrame({"bundle": [text]}))

        for hist, (n_ev, payloads) in sizes.items():
            rows.append({"mode": "in-process pyfunc", "history": hist, "events": n_ev,
                         "bytes": int(np.mean([len(p) for p in payloads])),
                         **_percentiles(time_calls(in_process, payloads, reps[hist])),
                         "load1": os.getloadavg()[0]})
            print(rows[-1], flush=True)
        env = {"OMP_NUM_THREADS": "1", "EHRFM_SERVE_MAX_REQUEST_BYTES": str(200_000_000)}
        with serve(reg.serve_uri, Path(tmp) / "server.log", tracking_uri=reg.tracking_uri, env=env) as srv:
            def http(text: str) -> None:
                body = json.dumps({"dataframe_records": [{"bundle": text}]}).encode()
                req = urllib.request.Request(srv.invocations, data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=300) as r:
                    assert r.status == 200
                    r.read()

            for hist, (n_ev, payloads) in sizes.items():
                rows.append({"mode": "HTTP (mlflow models serve)", "history": hist, "events": n_ev,
                             "bytes": int(np.mean([len(p) for p in payloads])),
                             **_percentiles(time_calls(http, payloads, reps[hist])),
                             "load1": os.getloadavg()[0]})
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    print(table.to_string(index=False))
    result = {"machine": f"{os.cpu_count()} CPU cores, shared with other engineers' jobs (see load1)",
              "model": ("tiny preset (mamba d_model=64, 2 layers), random weights, max_len 512, "
                        "torch 1 thread"),
              "note": "one patient per request; includes JSON parse + FHIR validation + mapping + tokenize + "
              "model "
                      "+ RiskAssessment; long history = largest Synthea bundles merged under one Patient",
              "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1))
    print(f"-> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
