"""``ehrfm ingest mimic --input <root with hosp/ icu/> --output <dir>``."""

from __future__ import annotations

import argparse
import json
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the MIMIC-IV ingest (Spark/split options are added by ``ehrfm.ingest.cli``)."""
    parser.add_argument("--input", required=True, help="MIMIC-IV root holding hosp/ and icu/ (local path or URI)")
    parser.add_argument("--output", required=True, help="output dataset directory (local path or URI)")
    parser.add_argument("--rules", default=None, help="alternative rules YAML (default: the packaged rules.yaml)")
    parser.add_argument("--dataset-name", default="MIMIC-IV", help="dataset_name in metadata/dataset.json")


def run(args: argparse.Namespace) -> int:
    """Run the ingest and print a summary; returns 0 on success."""
    from ehrfm.ingest.cli import spark_from_args
    from ehrfm.ingest.mimic.ingest import ingest_mimic
    from ehrfm.ingest.mimic.rules import load_rules

    spark = spark_from_args(args, "ehrfm-ingest-mimic")
    t0 = time.perf_counter()
    summary = ingest_mimic(
        spark,
        args.input,
        args.output,
        rules=load_rules(args.rules) if args.rules else None,
        split_ratios=args.split_ratios,
        split_seed=args.split_seed,
        rows_per_shard=args.rows_per_shard,
        dataset_name=args.dataset_name,
    )
    print_summary(summary, time.perf_counter() - t0)
    return 0


def print_summary(summary: dict, seconds: float) -> None:
    """Human-readable summary of an ingest run (the full one is in <output>/summary.json)."""
    print(f"events {summary['events']:,}  subjects {summary['subjects']:,}  codes {summary['codes']:,}  "
          f"rejects {summary['rejects']:,}  shards {len(summary['shards'])}  ({seconds:.1f} s)")
    print("splits " + json.dumps(summary["splits"]))
    for name, entry in summary.get("rules", {}).items():
        rej = sum(entry["rejects"].values())
        print(f"  {name:<60} events {entry['events']:>9,}  rejects {rej:>7,}")
