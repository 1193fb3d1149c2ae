"""``ehrfm evaluate``: metrics with CIs, calibration, subgroups and supervised baselines -> report files."""

from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ehrfm.evaluate.baselines import BINARY_BASELINES, TTE_BASELINES, BaselineConfig
from ehrfm.evaluate.report import ReportConfig, build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``ehrfm evaluate``."""
    parser.add_argument("--predictions", type=Path, help="model predictions parquet (contract: ehrfm.evaluate); optional")
    parser.add_argument("--labels", type=Path, required=True, help="folder of <task>.parquet label tables")
    parser.add_argument("--meds", type=Path, required=True, help="MEDS root (data/, metadata/subject_splits.parquet)")
    parser.add_argument("--output", type=Path, required=True, help="output folder for report.json / report.md / plots")
    parser.add_argument("--tasks", default="", help="comma-separated tasks (default: every labels file)")
    parser.add_argument("--baselines", default="", help=f"comma-separated subset of {','.join(BINARY_BASELINES + TTE_BASELINES)}")
    parser.add_argument("--truth", type=Path, help="synthetic truth/index_events.parquet for oracle rows")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for CIs (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threshold", choices=["youden", "max_f1", "fixed"], default="youden",
                        help="threshold rule applied on the tuning split")
    parser.add_argument("--split", default="held_out", help="split to evaluate on")
    parser.add_argument("--config", type=Path, help="YAML with 'report:' and 'baselines:' sections (ReportConfig/BaselineConfig fields)")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Build the report and print a summary table of the primary metric per task and model."""
    raw = yaml.safe_load(args.config.read_text()) if args.config else {}
    rep = dict(raw.get("report", {}) or {})
    rep.update(n_boot=args.bootstrap, seed=args.seed, threshold_rule=args.threshold, eval_split=args.split)
    bcfg = BaselineConfig(**(raw.get("baselines", {}) or {}))
    if "windows_days" in (raw.get("baselines") or {}):
        bcfg.windows_days = tuple(bcfg.windows_days)
    base = [b.strip() for b in args.baselines.split(",") if b.strip()]
    unknown = [b for b in base if b not in BINARY_BASELINES + TTE_BASELINES]
    if unknown:
        raise SystemExit(f"--baselines: unknown {unknown} (choose from {BINARY_BASELINES + TTE_BASELINES})")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] or None
    report = build_report(args.predictions, args.labels, args.meds, tasks, args.output, base, args.truth,
                          ReportConfig(**rep), bcfg, progress=not args.no_progress)
    print(f"{'task':<28}{'model':<22}{'n':>7}  primary metric")
    for task, res in report["tasks"].items():
        for model, info in res["models"].items():
            mets = info.get("metrics", {})
            key = {"binary": "auroc", "tte": "harrell_c"}.get(res["kind"], next(iter(mets), ""))
            v = (mets.get(key) or {}).get("value")
            print(f"{task:<28}{model:<22}{info['n']:>7}  {key}={'NaN' if v is None else f'{v:.3f}'}")
    print(f"report: {args.output / 'report.md'} and report.json")
    return 0
