"""``build_report``: every model (and baseline) side by side per task on the held-out split, with CIs,
subgroups, calibration and survival plots, and oracle rows when the synthetic truth table is given.

Outputs in ``output_dir``: ``report.json`` (every number: :meth:`Report.to_dict`), ``report.md``,
``plots/*.png`` and ``baseline_predictions.parquet`` (when baselines ran). Thresholds are chosen on each
model's tuning-split predictions (falling back to 0.5, noted, when it has none).

The result is a :class:`Report` of :class:`TaskResult` / :class:`ModelResult` records; the arrays a model's
subgroup table, paired comparisons and plots need are kept in :class:`Scored` records while a task is
evaluated and are never written.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve
from tqdm import tqdm

from ehrfm.config.evaluate import BaselineConfig, PrimaryMetric, ReportConfig
from ehrfm.evaluate import plots
from ehrfm.evaluate.baselines import run_baselines
from ehrfm.evaluate.binary import (
    auprc,
    auroc,
    binary_metrics,
    brier,
    choose_threshold,
    ece,
    reliability_curve,
)
from ehrfm.evaluate.bootstrap import MetricValue, bootstrap_metrics
from ehrfm.evaluate.data import (
    KEY,
    TaskKind,
    attach_split,
    load_events,
    load_labels,
    load_splits,
    task_kind,
    validate_predictions,
)
from ehrfm.evaluate.forecast import forecast_metrics
from ehrfm.evaluate.markdown import render_markdown
from ehrfm.evaluate.subgroups import AGE_BANDS, SUBGROUP_CODE_PREFIXES, subgroup_attributes, subgroup_table
from ehrfm.evaluate.survival import harrell_c, kaplan_meier, risk_from_survival, surv_array, tte_metrics
from ehrfm.schema import SUBJECT_ID, TRAIN_SPLIT, TUNING_SPLIT

__all__ = ["BaselineConfig", "Curves", "ModelResult", "OracleResult", "PairedDelta", "Report", "ReportConfig",
           "Scored", "SubgroupRow", "TaskResult", "build_report", "evaluate_task"]

Curve = tuple[np.ndarray, np.ndarray]
SubsetMetrics = Callable[[np.ndarray], dict[str, MetricValue]]
PRIMARY_METRIC = {"binary": "auroc", "tte": "harrell_c"}
"""The headline metric per task kind (forecast tasks: their first metric)."""


def _metric_dict(metrics: dict[str, MetricValue]) -> dict[str, dict[str, Any]]:
    return {k: v.to_dict() for k, v in metrics.items()}


def _value(mv: MetricValue | None) -> float | None:
    """A metric's point estimate, None when absent or undefined (NaN)."""
    return None if mv is None or math.isnan(mv.value) else float(mv.value)


@dataclass
class Curves:
    """Plot inputs of one model on one task (not written to report.json)."""

    reliability: Curve | None = None
    reliability_raw: Curve | None = None
    """Before calibration (predictions with ``prob_raw``)."""
    roc: Curve | None = None
    km: Curve | None = None
    mean_surv: Curve | None = None


@dataclass
class Scored:
    """One model's evaluated rows on one task: what its subgroup rows, paired AUROC differences and plots
    need."""

    rows: np.ndarray
    """Indices of the evaluated rows in the task's label table."""
    prob: np.ndarray | None = None
    """Binary tasks: the predicted probabilities of those rows."""
    positives: np.ndarray | None = None
    """0/1 labels (binary) or events (tte) of those rows; None for forecasts."""
    subset_metrics: SubsetMetrics | None = None
    """Metrics with CIs on a subset of the rows (positions into ``rows``)."""
    curves: Curves = field(default_factory=Curves)
    prob_raw: np.ndarray | None = None
    """Binary tasks of a calibrated model: the probabilities before calibration."""


@dataclass
class ModelResult:
    """One model's results on one task (a ``models`` entry of report.json)."""

    n: int
    subjects: int
    missing_predictions: int
    metrics: dict[str, MetricValue] = field(default_factory=dict)
    note: str | None = None
    threshold: float | None = None
    threshold_source: str | None = None
    positives: int | None = None
    horizons_days: list[float] | None = None
    auroc_over_oracle: float | None = None

    def to_dict(self, with_oracle: bool = False) -> dict[str, Any]:
        """The report.json entry (absent values omitted; ``auroc_over_oracle`` when the task has an
        oracle)."""
        out: dict[str, Any] = {"n": self.n, "subjects": self.subjects,
                               "missing_predictions": self.missing_predictions}
        for key in ("threshold", "threshold_source", "positives", "horizons_days"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["metrics"] = _metric_dict(self.metrics)
        if self.note is not None:
            out["note"] = self.note
        if with_oracle:
            out["auroc_over_oracle"] = self.auroc_over_oracle
        return out


@dataclass
class OracleResult:
    """AUROC of the synthetic truth's ``true_prob`` on the evaluated rows (the ceiling a model can reach)."""

    n: int
    auroc: MetricValue

    def to_dict(self) -> dict[str, Any]:
        """The report.json entry."""
        return {"n": self.n, "auroc": self.auroc.to_dict()}


@dataclass
class PairedDelta:
    """AUROC(model) - AUROC(baseline) on the rows both predicted, with a paired subject-bootstrap CI."""

    model: str
    baseline: str
    n: int
    delta_auroc: MetricValue

    def to_dict(self) -> dict[str, Any]:
        """The report.json entry."""
        return {"model": self.model, "baseline": self.baseline, "n": self.n,
                "delta_auroc": self.delta_auroc.to_dict()}


@dataclass
class SubgroupRow:
    """One (attribute, group) row of a task's subgroup table, with every model's metrics."""

    attribute: str
    group: str
    n: int
    subjects: int
    positives: int | None
    tiny: bool
    metrics: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    """model -> metric -> MetricValue dict."""

    def to_dict(self) -> dict[str, Any]:
        """The report.json entry."""
        return dataclasses.asdict(self)


@dataclass
class TaskResult:
    """Every model's results on one task (a ``tasks`` entry of report.json)."""

    kind: TaskKind
    n_labels: int
    n_eval: int
    models: dict[str, ModelResult] = field(default_factory=dict)
    subgroups: list[SubgroupRow] = field(default_factory=list)
    vs_baselines: list[PairedDelta] | None = None
    """Binary tasks: each model against each baseline."""
    oracle: OracleResult | None = None
    """Binary tasks with a truth table holding the task."""
    plots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report.json entry."""
        with_oracle = self.oracle is not None
        out: dict[str, Any] = {"kind": self.kind, "n_labels": self.n_labels, "n_eval": self.n_eval,
                               "models": {m: r.to_dict(with_oracle) for m, r in self.models.items()},
                               "subgroups": [r.to_dict() for r in self.subgroups]}
        if self.vs_baselines is not None:
            out["vs_baselines"] = [d.to_dict() for d in self.vs_baselines]
        if self.oracle is not None:
            out["oracle"] = self.oracle.to_dict()
        out["plots"] = list(self.plots)
        return out

    def primary_metric(self) -> str | None:
        """Name of the headline metric: AUROC (binary), Harrell's C (tte), else the first metric."""
        if self.kind in PRIMARY_METRIC:
            return PRIMARY_METRIC[self.kind]
        return next((k for r in self.models.values() for k in r.metrics), None)


@dataclass
class Report:
    """Everything written to report.json."""

    config: ReportConfig
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    prediction_tasks_without_labels: list[str] = field(default_factory=list)
    """Tasks present in the predictions without a label table (listed, not silently dropped)."""

    def to_dict(self) -> dict[str, Any]:
        """The report.json content."""
        return {"config": self.config.to_dict(), "tasks": {t: r.to_dict() for t, r in self.tasks.items()},
                "prediction_tasks_without_labels": list(self.prediction_tasks_without_labels)}

    def primary_metrics(self) -> list[PrimaryMetric]:
        """The primary metric of every (task, model), with its CI."""
        rows = []
        for task, res in self.tasks.items():
            key = res.primary_metric() or ""
            for model, r in res.models.items():
                mv = r.metrics.get(key)
                ci = (None, None) if mv is None or math.isnan(mv.ci_low) else (
                    float(mv.ci_low), float(mv.ci_high))
                rows.append(PrimaryMetric(task=task, model=model, metric=key, n=r.n, value=_value(mv),
                                          ci_low=ci[0], ci_high=ci[1]))
        return rows


def _stack(col: pd.Series) -> np.ndarray:
    return np.asarray([np.asarray(v, dtype=float) for v in col])


def _raw_prob(m: pd.DataFrame) -> np.ndarray | None:
    """``prob_raw`` (before calibration) when every row has it, else None."""
    if "prob_raw" not in m.columns or not m["prob_raw"].notna().all():
        return None
    return m["prob_raw"].astype(float).to_numpy()


def _calibration_fns(y: np.ndarray, p: np.ndarray, raw: np.ndarray | None, n_bins: int,
                     i: np.ndarray | slice = slice(None)) -> dict[str, Callable[[np.ndarray], float]]:
    """Brier and ECE of ``p`` on rows ``i`` (bootstrap positions into them), and of ``raw`` as
    ``brier_raw`` / ``ece_raw`` when the model was calibrated."""
    yi, pi = y[i], p[i]
    fns: dict[str, Callable[[np.ndarray], float]] = {"brier": lambda j: brier(yi[j], pi[j]),
                                                      "ece": lambda j: ece(yi[j], pi[j], n_bins)}
    if raw is not None:
        ri = raw[i]
        fns |= {"brier_raw": lambda j: brier(yi[j], ri[j]), "ece_raw": lambda j: ece(yi[j], ri[j], n_bins)}
    return fns


def _eval_binary(m: pd.DataFrame, tune: pd.DataFrame, cfg: ReportConfig,
                 base: ModelResult) -> tuple[ModelResult, Scored]:
    y = m["boolean_value"].astype(float).to_numpy()
    p = m["prob"].astype(float).to_numpy()
    raw = _raw_prob(m)
    if len(tune):
        thr = choose_threshold(tune["boolean_value"].astype(float).to_numpy(),
                               tune["prob"].astype(float).to_numpy(), cfg.threshold_rule)
        source = f"tuning ({cfg.threshold_rule})"
    else:
        thr, source = 0.5, "fixed 0.5 (no tuning predictions)"
    groups = m[SUBJECT_ID].to_numpy()
    metrics = binary_metrics(y, p, groups, thr, cfg.n_boot, cfg.seed, cfg.ece_bins)
    if raw is not None:  # before calibration, on the same rows and resamples
        fns = _calibration_fns(y, p, raw, cfg.ece_bins)
        metrics |= bootstrap_metrics({k: fns[k] for k in ("brier_raw", "ece_raw")}, groups, cfg.n_boot,
                                     cfg.seed)
    roc: Curve | None = None
    if 0 < y.sum() < len(y):
        fpr, tpr, _ = roc_curve(y, p)
        roc = (fpr, tpr)
    curves = Curves(reliability=reliability_curve(y, p, cfg.ece_bins), roc=roc,
                    reliability_raw=reliability_curve(y, raw, cfg.ece_bins) if raw is not None else None)

    def sub(i: np.ndarray) -> dict[str, MetricValue]:
        fns = {"auroc": lambda j: auroc(y[i][j], p[i][j]), "auprc": lambda j: auprc(y[i][j], p[i][j]),
               **_calibration_fns(y, p, raw, cfg.ece_bins, i)}
        return bootstrap_metrics(fns, groups[i], min(cfg.n_boot, 100), cfg.seed)

    result = dataclasses.replace(base, metrics=metrics, threshold=float(thr), threshold_source=source,
                                 positives=int(y.sum()))
    return result, Scored(m["_row"].to_numpy(), p, y, sub, curves, raw)


def _eval_tte(m: pd.DataFrame, train: np.ndarray, cfg: ReportConfig,
              base: ModelResult) -> tuple[ModelResult, Scored]:
    ev = m["event"].astype(int).to_numpy()
    dur = m["duration_days"].astype(float).to_numpy()
    surv = grid = None
    if "survival" in m.columns and m["survival"].notna().all():
        surv, grid = _stack(m["survival"]), np.asarray(m["times_days"].iloc[0], dtype=float)
    if "risk" in m.columns and m["risk"].notna().all():
        risk = m["risk"].astype(float).to_numpy()
    elif surv is not None and grid is not None:
        risk = risk_from_survival(surv, grid)
    else:
        raise ValueError(f"predictions of model {m['model'].iloc[0]!r}: TTE task needs 'risk' or "
                         "'survival'+'times_days'")
    groups = m[SUBJECT_ID].to_numpy()
    metrics, hs = tte_metrics(train, ev, dur, groups, risk, surv, grid, cfg.horizons, cfg.n_boot, cfg.seed)
    curves = Curves(km=kaplan_meier(ev, dur),
                    mean_surv=(grid, surv.mean(axis=0)) if surv is not None and grid is not None else None)

    def sub(i: np.ndarray) -> dict[str, MetricValue]:
        return bootstrap_metrics({"harrell_c": lambda j: harrell_c(ev[i][j], dur[i][j], risk[i][j])},
                                 groups[i], min(cfg.n_boot, 100), cfg.seed)

    result = dataclasses.replace(base, metrics=metrics, positives=int(ev.sum()), horizons_days=hs)
    return result, Scored(m["_row"].to_numpy(), None, ev, sub, curves)


def _eval_forecast(m: pd.DataFrame, cfg: ReportConfig, base: ModelResult) -> tuple[ModelResult, Scored]:
    pred = [list(v) for v in m["topk_codes"]]
    tgt = [list(v) if v is not None else [] for v in m["target_codes"]]
    groups = m[SUBJECT_ID].to_numpy()
    metrics = forecast_metrics(pred, tgt, groups, cfg.k, cfg.n_boot, cfg.seed)

    def sub(i: np.ndarray) -> dict[str, MetricValue]:
        return forecast_metrics([pred[j] for j in i], [tgt[j] for j in i], groups[i], cfg.k,
                                min(cfg.n_boot, 100), cfg.seed)

    return dataclasses.replace(base, metrics=metrics), Scored(m["_row"].to_numpy(), None, None, sub)


def _oracle(truth: pd.DataFrame, task: str, held: pd.DataFrame, cfg: ReportConfig) -> OracleResult | None:
    t = truth.loc[truth["task"] == task, [*KEY, "true_prob"]].copy()
    if t.empty:
        return None
    t["prediction_time"] = pd.to_datetime(t["prediction_time"])
    j = held.merge(t, on=KEY, how="inner")
    y, p = j["boolean_value"].astype(float).to_numpy(), j["true_prob"].astype(float).to_numpy()
    mv = bootstrap_metrics({"auroc": lambda i: auroc(y[i], p[i])}, j[SUBJECT_ID].to_numpy(), cfg.n_boot,
                           cfg.seed)["auroc"]
    return OracleResult(n=len(j), auroc=mv)


def evaluate_task(
    task: str, kind: TaskKind, labels: pd.DataFrame, preds: pd.DataFrame, attrs: pd.DataFrame,
    cfg: ReportConfig, truth: pd.DataFrame | None, plot_dir: Path,
) -> TaskResult:
    """Metrics of every model on one task (labels with ``split``; preds in the contract)."""
    labels = labels.reset_index(drop=True).assign(_row=lambda d: np.arange(len(d)))
    held = labels[labels["split"] == cfg.eval_split]
    tr = labels[labels["split"] == TRAIN_SPLIT]
    train_surv = None
    if kind == "tte" and len(tr):
        train_surv = surv_array(tr["event"].to_numpy(), tr["duration_days"].to_numpy())
    if kind == "tte" and train_surv is None:
        raise ValueError(f"task {task!r}: no train-split labels, needed to estimate censoring for IPCW "
                         "metrics")
    res = TaskResult(kind=kind, n_labels=len(labels), n_eval=len(held))
    pcols = [c for c in preds.columns if c not in ("split", "task")]
    scored: dict[str, Scored] = {}
    for model_key, pm in preds.groupby("model", sort=True):
        model = str(model_key)
        m = held.merge(pm[pcols], on=KEY, how="inner").sort_values("_row")
        base = ModelResult(n=len(m), subjects=int(m[SUBJECT_ID].nunique()),
                           missing_predictions=len(held) - len(m))
        if m.empty:
            res.models[model] = dataclasses.replace(base, note="no predictions on the evaluation split")
            continue
        if kind == "binary":
            tune = labels[labels["split"] == TUNING_SPLIT].merge(pm[pcols], on=KEY, how="inner")
            res.models[model], scored[model] = _eval_binary(m, tune, cfg, base)
        elif kind == "tte":
            assert train_surv is not None
            res.models[model], scored[model] = _eval_tte(m, train_surv, cfg, base)
        else:
            res.models[model], scored[model] = _eval_forecast(m, cfg, base)
    res.subgroups = _subgroups(scored, labels, attrs, cfg)
    if kind == "binary":
        res.vs_baselines = _paired_auroc(scored, labels, cfg)
    if truth is not None and kind == "binary":
        res.oracle = _oracle(truth, task, held, cfg)
        if res.oracle is not None:
            o = _value(res.oracle.auroc)
            for r in res.models.values():
                a = _value(r.metrics.get("auroc"))
                r.auroc_over_oracle = a / o if a is not None and o else None
    res.plots = _plots(task, kind, scored, plot_dir) + _subgroup_reliability(task, scored, attrs, cfg,
                                                                             plot_dir)
    return res


def _auroc_delta(y: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> Callable[[np.ndarray], float]:
    """Row indices -> AUROC(pa) - AUROC(pb) on those rows."""
    return lambda i: auroc(y[i], pa[i]) - auroc(y[i], pb[i])


def _paired_auroc(scored: dict[str, Scored], labels: pd.DataFrame, cfg: ReportConfig) -> list[PairedDelta]:
    """AUROC(model) - AUROC(baseline) on the rows both predicted, with a paired cluster-bootstrap CI (the same
    resampled subjects for both): "beats the baseline" is claimed only when the CI excludes 0."""
    y_all = labels["boolean_value"].astype(float).to_numpy()
    subjects = labels[SUBJECT_ID].to_numpy()
    out: list[PairedDelta] = []
    for a in [m for m in scored if not m.startswith("baseline_")]:
        for b in [m for m in scored if m.startswith("baseline_")]:
            pa, pb = scored[a].prob, scored[b].prob
            assert pa is not None and pb is not None
            rows, ia, ib = np.intersect1d(scored[a].rows, scored[b].rows, return_indices=True)
            if not len(rows):
                continue
            mv = bootstrap_metrics({"delta": _auroc_delta(y_all[rows], pa[ia], pb[ib])}, subjects[rows],
                                   cfg.n_boot, cfg.seed)["delta"]
            out.append(PairedDelta(model=a, baseline=b, n=len(rows), delta_auroc=mv))
    return out


def _subgroups(scored: dict[str, Scored], labels: pd.DataFrame, attrs: pd.DataFrame,
               cfg: ReportConfig) -> list[SubgroupRow]:
    rows: dict[tuple[str, str], SubgroupRow] = {}
    for model, s in scored.items():
        if s.subset_metrics is None:
            continue
        a = attrs.iloc[s.rows].reset_index(drop=True)
        subj = labels[SUBJECT_ID].to_numpy()[s.rows]
        for r in subgroup_table(a, subj, s.positives, s.subset_metrics, cfg.subgroup_min_n,
                                cfg.subgroup_min_pos):
            key = (r["attribute"], r["group"])
            if key not in rows:
                rows[key] = SubgroupRow(attribute=r["attribute"], group=r["group"], n=r["n"],
                                        subjects=r["subjects"], positives=r["positives"], tiny=r["tiny"])
            row = rows[key]
            row.metrics[model] = r["metrics"]
    return list(rows.values())


def _plots(task: str, kind: TaskKind, scored: dict[str, Scored], plot_dir: Path) -> list[str]:
    files: list[Path] = []
    curves = {m: s.curves for m, s in scored.items()}
    if kind == "binary" and curves:
        reliability = {m: c.reliability for m, c in curves.items() if c.reliability is not None}
        reliability |= {f"{m} (before calibration)": c.reliability_raw for m, c in curves.items()
                        if c.reliability_raw is not None}
        files.append(plots.reliability_diagram(reliability, f"{task}: reliability",
                                               plot_dir / f"{task}_reliability.png"))
        roc = {m: c.roc for m, c in curves.items() if c.roc is not None}
        if roc:
            files.append(plots.roc_plot(roc, f"{task}: ROC", plot_dir / f"{task}_roc.png"))
    if kind == "tte" and curves:
        km = next(iter(curves.values())).km
        assert km is not None
        pred = {m: c.mean_surv for m, c in curves.items() if c.mean_surv is not None}
        files.append(plots.km_vs_predicted(km, pred, f"{task}: Kaplan–Meier vs predicted",
                                           plot_dir / f"{task}_km.png"))
    return [str(f.relative_to(plot_dir.parent)) for f in files]


def _subgroup_reliability(task: str, scored: dict[str, Scored], attrs: pd.DataFrame, cfg: ReportConfig,
                          plot_dir: Path) -> list[str]:
    """Per calibrated model and subgroup attribute: one panel per group (``min_n`` rows or more) with the
    reliability curve before and after calibration (``plots/<task>_reliability_<model>_<attribute>.png``)."""
    files: list[Path] = []
    for model, s in scored.items():
        if s.prob_raw is None or s.prob is None or s.positives is None:
            continue
        a = attrs.iloc[s.rows].reset_index(drop=True)
        for attr in a.columns:
            values = a[attr].to_numpy()
            panels = {}
            order = [b[2] for b in AGE_BANDS] if attr == "age_band" else []  # age bands in age order
            for group in sorted(pd.unique(values), key=lambda v: (order.index(v) if v in order else 99,
                                                                  str(v))):
                i = np.flatnonzero(values == group)
                if len(i) < cfg.subgroup_min_n:
                    continue
                y = s.positives[i]
                panels[f"{attr}={group} (n={len(i)})"] = {
                    "calibrated": reliability_curve(y, s.prob[i], cfg.ece_bins),
                    "before calibration": reliability_curve(y, s.prob_raw[i], cfg.ece_bins)}
            if panels:
                safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{model}_{attr}")
                files.append(plots.reliability_panels(panels, f"{task}: {model} by {attr}",
                                                      plot_dir / f"{task}_reliability_{safe}.png"))
    return [str(f.relative_to(plot_dir.parent)) for f in files]


def build_report(
    predictions: pd.DataFrame | str | Path | None,
    labels: dict[str, pd.DataFrame] | str | Path,
    meds_dir: str | Path,
    tasks: Sequence[str] | None,
    output_dir: str | Path,
    baselines: Sequence[str] | None = None,
    truth: pd.DataFrame | str | Path | None = None,
    config: ReportConfig | None = None,
    baseline_config: BaselineConfig | None = None,
    progress: bool = True,
) -> Report:
    """Evaluate model predictions and/or baselines on ``tasks`` and write report.json / report.md / plots.

    predictions: DataFrame or parquet path in the ``ehrfm.evaluate`` contract, or None (baselines only);
    labels: ``<labels>/<task>.parquet`` folder or task -> DataFrame; meds_dir: MEDS root (splits, events);
    baselines: subset of lr, hgb, cox, rsf (None: ``config.baselines``); truth: synthetic
    ``truth/index_events.parquet`` (oracle rows). ``config`` is not modified (the report records a copy with
    the baselines that ran). Returns the :class:`Report` written to report.json.
    """
    cfg = config or ReportConfig()
    if baselines is not None:
        cfg = dataclasses.replace(cfg, baselines=list(baselines))
    which = list(cfg.baselines)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(labels, str | Path):
        lab = load_labels(labels, list(tasks) if tasks else None)
    else:
        lab = dict(labels)
    if tasks:
        lab = {t: lab[t] for t in tasks}
    splits = load_splits(meds_dir)
    preds = pd.DataFrame(columns=["model", "task", *KEY])
    if predictions is not None:
        preds = validate_predictions(pd.read_parquet(predictions) if isinstance(predictions, str | Path)
                                     else predictions)
    if predictions is None and not which:
        raise ValueError("nothing to evaluate: give predictions and/or baselines")
    events = load_events(meds_dir, [SUBJECT_ID, "time", "code"], None if which else SUBGROUP_CODE_PREFIXES)
    truth_df = pd.read_parquet(truth) if isinstance(truth, str | Path) else truth
    # predictions for tasks that have no labels here are not silently dropped: they are listed
    report = Report(config=cfg,
                    prediction_tasks_without_labels=sorted(set(preds["task"].astype(str)) - set(lab)))
    base_frames = []
    for task in tqdm(list(lab), desc="evaluate", disable=not progress):
        labels_t = attach_split(lab[task], splits, task)
        kind = task_kind(labels_t, task)
        pt = preds[preds["task"] == task]
        if which:  # forecast tasks get the frequency baseline whenever baselines are asked for
            b = run_baselines(events, labels_t, task, kind, which, baseline_config)
            base_frames.append(b)
            pt = pd.concat([pt, b], ignore_index=True) if len(pt) else b
        attrs = subgroup_attributes(events, labels_t)
        report.tasks[task] = evaluate_task(task, kind, labels_t, pt, attrs, cfg, truth_df, out / "plots")
    if base_frames:
        pd.concat(base_frames, ignore_index=True).to_parquet(out / "baseline_predictions.parquet")
    data = report.to_dict()
    (out / "report.json").write_text(json.dumps(data, indent=1, default=_json_default, allow_nan=False))
    (out / "report.md").write_text(render_markdown(data))
    return report


def _json_default(o: object) -> object:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if math.isnan(float(o)) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o)}")
