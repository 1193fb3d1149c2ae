"""``ehrfm synth``: generate a synthetic FHIR R4 population with planted, documented risk.

Example::

    ehrfm synth --n-patients 10000 --seed 7 --output data/synth
    ehrfm synth --config configs/synth.yaml --output data/synth   # YAML keys = the long option names

The risk formulas are documented in docs/synthetic_population.md; the truth is written to
``<output>/truth/index_events.parquet``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

_DEFAULTS: dict[str, Any] = {"n_patients": 1000, "seed": 0, "start_year": 2015, "years": 10, "gzip": False,
                             "patients_per_file": 0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ehrfm synth``."""
    parser.add_argument("--n-patients", type=int, default=None, help="number of patients (default 1000)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default 0)")
    parser.add_argument("--output", required=True, help="output folder (created)")
    parser.add_argument("--start-year", type=int, default=None,
                        help="first calendar year of the record (default 2015)")
    parser.add_argument("--years", type=int, default=None, help="length of the record in years (default 10)")
    parser.add_argument("--gzip", action="store_true", default=None, help="write .ndjson.gz files")
    parser.add_argument("--patients-per-file", type=int, default=None,
                        help="shard each resource type into <Type>.000.ndjson, ... of this many patients"
                             " (default 0: one file per type)")
    parser.add_argument("--config", default=None,
                        help="YAML file with any of: n_patients, seed, start_year, years, gzip, patients_per_file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _resolve(args: argparse.Namespace) -> dict[str, Any]:
    opts = dict(_DEFAULTS)
    if args.config:
        import yaml

        data = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{args.config}: expected a mapping of options, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_DEFAULTS))
        if unknown:
            raise ValueError(f"{args.config}: unknown option(s) {unknown}; allowed: {sorted(_DEFAULTS)}")
        opts.update(data)
    for key in _DEFAULTS:
        value = getattr(args, key)
        if value is not None:
            opts[key] = value
    return opts


def run(args: argparse.Namespace) -> int:
    """Generate the population and print its summary."""
    from ehrfm.synth.generate import format_summary, generate
    from ehrfm.synth.timeline import SynthConfig

    try:
        opts = _resolve(args)
        cfg = SynthConfig(start_year=int(opts["start_year"]), years=int(opts["years"]))
        n = int(opts["n_patients"])
        if n < 1:
            raise ValueError(f"--n-patients must be >= 1, got {n}")
        if int(opts["patients_per_file"]) < 0:
            raise ValueError(f"--patients-per-file must be >= 0, got {opts['patients_per_file']}")
    except (ValueError, OSError) as exc:
        print(f"ehrfm synth: error: {exc}", file=sys.stderr)
        return 2
    t0, c0 = time.perf_counter(), time.process_time()
    summary = generate(n, int(opts["seed"]), args.output, cfg, compress=bool(opts["gzip"]),
                       patients_per_file=int(opts["patients_per_file"]), progress=not args.no_progress)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(format_summary(summary))
    # CPU seconds too: on a shared machine wall time overstates the cost
    print(f"wrote {args.output} in {dt:.1f} s ({n / dt:,.0f} patients/s wall, {n / max(cpu, 1e-9):,.0f} per CPU-second);"
          f" truth: {args.output}/truth/index_events.parquet")
    return 0
