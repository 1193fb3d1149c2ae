"""``ehrfm finetune --checkpoint <pretrain run> --data <tokens> --tasks a,b,... --output <dir> [--lora] [--few-shot K]``.

With ``--labels`` and ``--meds`` it also runs ``ehrfm evaluate`` on the written predictions (baselines and
oracle rows optional) and logs the report files and headline metrics to the finetuning MLflow run.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from ehrfm.models.config import config_dir

DEFAULT_TASKS = "readmission_30d,mortality_inhospital,mortality_30d_post_discharge,los_gt_7d,death_1y_tte,next_visit_codes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the finetune options."""
    parser.add_argument("--checkpoint", required=True, help="output directory of `ehrfm pretrain` (or its model/)")
    parser.add_argument("--data", required=True, help="tokens directory: vocab.json + tasks/<task>/*.parquet")
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated tasks (default: {DEFAULT_TASKS})")
    parser.add_argument("--output", required=True, help="run directory (model/, predictions.parquet, checkpoints/)")
    parser.add_argument("--config", default=str(config_dir() / "finetune" / "tiny.yaml"),
                        help="finetuning YAML (default: configs/finetune/tiny.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set trainer.max_steps=500 --set monitor=loss")
    parser.add_argument("--lora", action="store_true", help="LoRA on the backbone's projections (= adapt.mode=lora)")
    parser.add_argument("--few-shot", type=int, default=None, metavar="K",
                        help="train on K labelled rows per task, stratified (= adapt.few_shot=K)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="continue from CKPT, or from <output>/checkpoints/last.ckpt when given without a value")
    parser.add_argument("--labels", type=Path, help="label tables folder: also run the evaluation report")
    parser.add_argument("--meds", type=Path, help="MEDS root (splits, events for baselines); with --labels")
    parser.add_argument("--truth", type=Path, help="synthetic truth/index_events.parquet (oracle rows)")
    parser.add_argument("--baselines", default="", help="comma-separated baselines for the report, e.g. lr,hgb,cox")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples for the report's CIs")


def run(args: argparse.Namespace) -> int:
    """Finetune, predict, optionally evaluate; print the tuning summary table."""
    from ehrfm.train.finetune_run import load_finetune_config, run_finetuning

    overrides = list(args.overrides)
    if args.lora:
        overrides.append("adapt.mode=lora")
    if args.few_shot is not None:
        overrides.append(f"adapt.few_shot={args.few_shot}")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise SystemExit("ehrfm finetune: --tasks is empty")
    if bool(args.labels) != bool(args.meds):
        raise SystemExit("ehrfm finetune: --labels and --meds go together (both are needed for the report)")
    try:
        cfg = load_finetune_config(args.config, overrides)
        summary = run_finetuning(cfg, args.checkpoint, args.data, tasks, args.output, resume=args.resume)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise SystemExit(f"ehrfm finetune: {exc}") from None
    print(summary_table(summary))
    out = Path(args.output)
    if args.labels:
        report = evaluate_run(out, args.labels, args.meds, tasks, args.truth,
                              [b for b in args.baselines.split(",") if b.strip()], args.bootstrap)
        print(report_table(report))
        print(f"report: {out / 'report' / 'report.md'}")
    print(f"model: {out / 'model'}  predictions: {out / 'predictions.parquet'}")
    return 0


def summary_table(summary: dict[str, Any]) -> str:
    """Tuning metrics per task as a text table."""
    lines = [f"{'task':<30}{'train':>7}{'tuning':>8}  tuning metrics",
             "-" * 72]
    for task, mets in summary["tuning"].items():
        shown = "  ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in mets.items() if k != "n")
        lines.append(f"{task:<30}{summary['train_rows'].get(task, 0):>7}{mets.get('n', 0):>8}  {shown}")
    lines.append(f"mode={summary['mode']} few_shot={summary['few_shot']} steps={summary['global_step']} "
                 f"trainable={summary['trainable_parameters']:,} seconds={summary['seconds']}")
    return "\n".join(lines)


def evaluate_run(run_dir: Path, labels: Path, meds: Path, tasks: list[str], truth: Path | None,
                 baselines: list[str], n_boot: int = 200) -> dict[str, Any]:
    """``build_report`` on ``<run>/predictions.parquet`` into ``<run>/report/``; logs the report files and the
    primary metric per (task, model) to the run's MLflow run (when tracking was on)."""
    from ehrfm.evaluate import ReportConfig, build_report
    from ehrfm.tracking import Tracker

    report = build_report(run_dir / "predictions.parquet", labels, meds, tasks, run_dir / "report", baselines, truth,
                          ReportConfig(n_boot=n_boot))
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("mlflow_run_id"):
        tracker = Tracker(summary["mlflow_dir"], summary["mlflow_experiment"])
        tracker.run_id = summary["mlflow_run_id"]
        tracker.log_artifacts(run_dir / "report", "report")
        # MLflow metric names allow [A-Za-z0-9_-. :/] only (e.g. no "@" of "recall@10")
        tracker.log_metrics({re.sub(r"[^\w\-. :/]", "_", f"heldout_{k}/{t}/{m}"): v
                             for t, m, k, v in primary_metrics(report) if v is not None})
    return report


def primary_metrics(report: dict[str, Any]) -> list[tuple[str, str, str, float | None]]:
    """(task, model, metric, value) of the primary metric (AUROC, Harrell's C, else the first)."""
    rows = []
    for task, res in report["tasks"].items():
        for model, info in res["models"].items():
            mets = info.get("metrics", {})
            key = {"binary": "auroc", "tte": "harrell_c"}.get(res["kind"], next(iter(mets), ""))
            rows.append((task, model, key, (mets.get(key) or {}).get("value")))
    return rows


def report_table(report: dict[str, Any]) -> str:
    """Held-out primary metric per task and model, with the CI when present."""
    lines = [f"{'task':<30}{'model':<26}{'n':>7}  held-out primary metric [95% CI]"]
    for task, res in report["tasks"].items():
        for model, info in res["models"].items():
            mets = info.get("metrics", {})
            key = {"binary": "auroc", "tte": "harrell_c"}.get(res["kind"], next(iter(mets), ""))
            m = mets.get(key) or {}
            v, lo, hi = m.get("value"), m.get("ci_low"), m.get("ci_high")
            ci = f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else ""
            lines.append(f"{task:<30}{model:<26}{info.get('n', 0):>7}  {key}="
                         f"{'NaN' if v is None else f'{v:.3f}'}{ci}")
    return "\n".join(lines)
