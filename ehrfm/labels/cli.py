"""``ehrfm label``: label tables from ``tasks/*.yaml`` for an ingested MEDS dataset (Spark)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

# no pandas / Spark at import time: ``ehrfm --help`` imports every stage module to build its parser
DEFAULT_TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ehrfm label``."""
    parser.add_argument("--meds", required=True, help="ingested MEDS dataset folder (data/, metadata/)")
    parser.add_argument("--tasks", default="all", help="comma-separated task names, or 'all' (default)")
    parser.add_argument("--output", required=True, help="output folder: one <task>.parquet per task")
    parser.add_argument("--tasks-dir", default=str(DEFAULT_TASKS_DIR), help="folder of task YAML files")
    parser.add_argument("--master", default=None, help="Spark master (default local[*]; ignored under spark-submit)")


def run(args: argparse.Namespace) -> int:
    """Load the task specs, label the dataset with Spark, print and save the summary."""
    from ehrfm.labels.parse import available_tasks, load_tasks
    from ehrfm.labels.spec import TaskSpecError

    try:
        specs = load_tasks(args.tasks, args.tasks_dir)
    except (KeyError, TaskSpecError) as e:
        print(f"ehrfm label: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    if not specs:
        print(f"ehrfm label: no tasks selected (known: {', '.join(available_tasks(args.tasks_dir))})", file=sys.stderr)
        return 2
    if not (Path(args.meds) / "data").is_dir():
        print(f"ehrfm label: --meds {args.meds}: no data/ folder (expected an ingested MEDS dataset)", file=sys.stderr)
        return 2
    # Spark's Python workers must run this interpreter (where ehrfm and pandas are installed)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from ehrfm.labels.dataset import label_dataset
    from ehrfm.spark import get_spark

    spark = get_spark("ehrfm-label", master=args.master)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = label_dataset(spark, args.meds, specs, args.output, progress=True)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    out = Path(args.output)
    summary.to_json(out / "summary.json", orient="records", indent=1)
    (out / "tasks.json").write_text(json.dumps({s.name: s.kind for s in specs}, indent=1))
    with_cols = ["task", "kind", "split", "rows", "subjects", "positives", "prevalence"]
    print(summary[with_cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"labels written to {out}/<task>.parquet")
    return 0
