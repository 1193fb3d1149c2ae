"""``ehrfm ingest fhir``: FHIR Bundles / NDJSON -> a MEDS dataset (Spark).

Example::

    ehrfm ingest fhir --input ../shared/data/synthea-fhir/bundles --output out/fhir_meds
    ehrfm ingest fhir --config etl/fhir.yaml --validate full --master local[4]

A ``--config`` YAML may hold any of ``input`` (list), ``output``, ``validate``, ``master``,
``dataset_name``, ``sample_every``, ``max_time``; flags given on the command line win.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

from ehrfm.ingest.fhir.times import TimeParseError, parse_fhir_time

DEFAULTS: dict[str, Any] = {"input": None, "output": None, "validate": "auto", "master": None,
                            "dataset_name": "fhir", "sample_every": 50, "max_time": None}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ehrfm ingest fhir``."""
    parser.add_argument("--input", "-i", nargs="+", action="extend", default=None,
                        help="Bundle JSON / NDJSON files (.json, .ndjson, .jsonl, optionally .gz), folders or globs")
    parser.add_argument("--output", "-o", help="output folder of the MEDS dataset")
    parser.add_argument("--validate", choices=("auto", "none", "full"), default=None,
                        help="FHIR model validation: full = every mapped resource (rejects invalid ones); auto (default) "
                             "= rejected records plus a 1-in-N sample reported in summary.json; none")
    parser.add_argument("--master", default=None, help="Spark master (default: $EHRFM_SPARK_MASTER or local[*])")
    parser.add_argument("--dataset-name", dest="dataset_name", default=None, help="MEDS dataset_name (default: fhir)")
    parser.add_argument("--sample-every", dest="sample_every", type=int, default=None,
                        help="auto validation samples 1 mapped record in N (default 50)")
    parser.add_argument("--max-time", dest="max_time", default=None,
                        help="FHIR date/time after which events are impossible (default: now + 1 day); "
                             "fix it to make reruns reproducible")
    parser.add_argument("--config", type=Path, default=None, help="YAML file with any of the options above")


def resolve_options(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults < ``--config`` YAML < flags. Raises ``ValueError`` naming a bad or missing option."""
    opts = dict(DEFAULTS)
    if getattr(args, "config", None):
        loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"--config {args.config}: expected a mapping of options")
        unknown = set(loaded) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"--config {args.config}: unknown option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
        opts.update(loaded)
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            opts[key] = value
    if isinstance(opts["input"], str):
        opts["input"] = [opts["input"]]
    if not opts["input"]:
        raise ValueError("--input is required (files, folders or globs of FHIR Bundles / NDJSON)")
    if not opts["output"]:
        raise ValueError("--output is required")
    if opts["validate"] not in ("auto", "none", "full"):
        raise ValueError(f"validate must be auto, none or full, got {opts['validate']!r}")
    if opts["max_time"] is not None:
        try:
            opts["max_time_us"] = parse_fhir_time(str(opts["max_time"]))
        except TimeParseError as e:
            raise ValueError(f"--max-time: {e}") from None
    return opts


def run(args: argparse.Namespace) -> int:
    """Run the ingest; prints the per-resource-type summary. Exit code 0, or 1 when counts do not reconcile."""
    try:
        opts = resolve_options(args)
    except ValueError as e:
        print(f"ehrfm ingest fhir: {e}", file=sys.stderr)
        return 2
    from ehrfm.ingest.cli import spark_from_args
    from ehrfm.ingest.fhir.spark_ingest import ingest_fhir

    args.master = opts["master"]
    # spark_from_args honours --master/--conf, spark-submit, and points the Python workers at this interpreter
    spark = spark_from_args(args, app_name="ehrfm-ingest-fhir")
    result = ingest_fhir(
        spark, opts["input"], opts["output"], validate=opts["validate"], dataset_name=opts["dataset_name"],
        sample_every=int(opts["sample_every"]), max_time_us=opts.get("max_time_us"), split_ratios=getattr(args, "split_ratios", (0.8, 0.1, 0.1)),
        split_seed=getattr(args, "split_seed", 0), rows_per_shard=getattr(args, "rows_per_shard", None), progress=True)
    keys = ("files", "events", "subjects", "codes", "rejects", "reconciled", "validation_sample", "splits")
    print(json.dumps({k: result.get(k) for k in keys}, indent=2, default=str))
    print(f"wrote {opts['output']} (summary.json, data/, metadata/, rejects/)")
    return 0 if result.get("reconciled") else 1
