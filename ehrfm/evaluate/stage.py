"""``ehrfm evaluate`` stage: ``run(EvaluateConfig, Layout) -> EvaluateSummary``.

Reads the label tables (``layout.labels_dir``), the MEDS dataset (``layout.meds_paths``: splits, and events
for the baselines and subgroups), the model predictions (``predictions``, or else the finetuning run's
``predictions.parquet`` together with those of every finished ``ehrfm simulate`` run, the zero-shot models,
``layout.simulate_predictions()``) and the synthetic truth when present; writes ``report.json``,
``report.md`` and ``plots/`` into ``layout.evaluation_dir``. ``ehrfm finetune`` with ``evaluate: true`` calls
:func:`write_report` too.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ehrfm.config.base import ConfigError
from ehrfm.config.evaluate import BaselineConfig, EvaluateConfig, EvaluateSummary, PrimaryMetric, ReportConfig
from ehrfm.layout import Layout


def run(cfg: EvaluateConfig, layout: Layout) -> EvaluateSummary:
    """Evaluate the predictions and/or baselines into ``layout.evaluation_dir``; print the primary metrics."""
    predictions = Path(cfg.predictions) if cfg.predictions else layout.finetune_run.predictions
    if cfg.predictions and not predictions.exists():
        raise FileNotFoundError(f"predictions={cfg.predictions}: not found")
    files = [predictions] if predictions.exists() else []
    if not cfg.predictions:  # the zero-shot models of `ehrfm simulate` sit beside the finetuned one
        files += layout.simulate_predictions()
    if not files:
        if not cfg.report.baselines:
            raise ConfigError(f"predictions=None: no finetuning predictions at {predictions}, no simulation "
                              "runs and no report.baselines: nothing to evaluate")
        print(f"no model predictions at {predictions}: baselines only")
    summary = write_report(layout, files or None, cfg.tasks, cfg.truth, cfg.report, cfg.baseline,
                           cfg.progress)
    print(primary_table(summary.primary))
    print(f"report: {summary.report_md} and report.json")
    return summary


def write_report(layout: Layout, predictions: Path | Sequence[Path] | None, tasks: Sequence[str],
                 truth: str | None, report: ReportConfig, baseline: BaselineConfig | None = None,
                 progress: bool = True) -> EvaluateSummary:
    """:func:`~ehrfm.evaluate.report.build_report` of the layout's labels and MEDS into its evaluation folder.

    ``predictions``: one parquet file, or several whose rows are evaluated together (distinct model names).
    ``truth``: the synthetic truth table (oracle rows); default ``layout.truth`` when it exists.
    """
    import pandas as pd

    from ehrfm.evaluate.report import build_report

    preds: pd.DataFrame | Path | None = None
    if isinstance(predictions, Path):
        preds = predictions
    elif predictions is not None:
        preds = pd.concat([pd.read_parquet(p) for p in predictions], ignore_index=True)

    labels, meds = layout.labels_dir, layout.meds_paths
    if not labels.is_dir():
        raise FileNotFoundError(f"labels={labels}: no label tables (run `ehrfm label`)")
    if not meds.subject_splits.exists():
        raise FileNotFoundError(f"meds={meds.root}: no {meds.subject_splits.name} (expected an ingested MEDS "
                                "dataset)")
    truth_path = Path(truth) if truth else (layout.truth if layout.truth.exists() else None)
    if truth_path is not None and not truth_path.exists():
        raise FileNotFoundError(f"truth={truth}: not found")
    out = layout.evaluation_dir
    result = build_report(preds, labels, meds.root, list(tasks) or None, out, None, truth_path, report,
                          baseline, progress=progress)
    return EvaluateSummary(report_json=str(out / "report.json"), report_md=str(out / "report.md"),
                           tasks=list(result.tasks), primary=result.primary_metrics(),
                           prediction_tasks_without_labels=list(result.prediction_tasks_without_labels))


def primary_table(rows: Sequence[PrimaryMetric]) -> str:
    """The primary metric per task and model, with its 95% CI when there is one, as a text table."""
    lines = [f"{'task':<30}{'model':<26}{'n':>7}  primary metric [95% CI]"]
    for r in rows:
        value = "NaN" if r.value is None else f"{r.value:.3f}"
        ci = f" [{r.ci_low:.3f}, {r.ci_high:.3f}]" if r.ci_low is not None and r.ci_high is not None else ""
        lines.append(f"{r.task:<30}{r.model:<26}{r.n:>7}  {r.metric}={value}{ci}")
    return "\n".join(lines)
