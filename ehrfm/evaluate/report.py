"""``build_report``: every model (and baseline) side by side per task on the held-out split, with CIs,
subgroups, calibration and survival plots, and oracle rows when the synthetic truth table is given.

Outputs in ``output_dir``: ``report.json`` (every number), ``report.md``, ``plots/*.png`` and
``baseline_predictions.parquet`` (when baselines ran). Thresholds are chosen on each model's tuning-split
predictions (falling back to 0.5, noted, when it has none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve
from tqdm import tqdm

from ehrfm.evaluate import plots
from ehrfm.evaluate.baselines import BaselineConfig, run_baselines
from ehrfm.evaluate.binary import (
    ThresholdRule,
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
from ehrfm.evaluate.subgroups import SUBGROUP_CODE_PREFIXES, subgroup_attributes, subgroup_table
from ehrfm.evaluate.survival import harrell_c, kaplan_meier, risk_from_survival, surv_array, tte_metrics
from ehrfm.schema import HELD_OUT_SPLIT, SUBJECT_ID, TRAIN_SPLIT, TUNING_SPLIT


@dataclass
class ReportConfig:
    """Evaluation settings recorded in report.json."""

    n_boot: int = 200
    seed: int = 0
    threshold_rule: ThresholdRule = "youden"
    ece_bins: int = 10
    k: int = 10
    horizons: list[float] | None = None
    eval_split: str = HELD_OUT_SPLIT
    subgroup_min_n: int = 50
    subgroup_min_pos: int = 10
    baselines: list[str] = field(default_factory=list)


def _stack(col: pd.Series) -> np.ndarray:
    return np.asarray([np.asarray(v, dtype=float) for v in col])


def _eval_binary(m: pd.DataFrame, tune: pd.DataFrame, cfg: ReportConfig, out: dict[str, Any]) -> dict[str, Any]:
    y = m["boolean_value"].astype(float).to_numpy()
    p = m["prob"].astype(float).to_numpy()
    thr = choose_threshold(tune["boolean_value"].astype(float).to_numpy(), tune["prob"].astype(float).to_numpy(), cfg.threshold_rule) if len(tune) else 0.5
    out["threshold"] = thr
    out["threshold_source"] = f"tuning ({cfg.threshold_rule})" if len(tune) else "fixed 0.5 (no tuning predictions)"
    metrics = binary_metrics(y, p, m[SUBJECT_ID].to_numpy(), thr, cfg.n_boot, cfg.seed, cfg.ece_bins)
    out["positives"] = int(y.sum())
    out["_curves"] = {"reliability": reliability_curve(y, p, cfg.ece_bins), "roc": roc_curve(y, p)[:2] if 0 < y.sum() < len(y) else None}

    def sub(i: np.ndarray) -> dict[str, MetricValue]:
        fns = {"auroc": lambda j: auroc(y[i][j], p[i][j]), "auprc": lambda j: auprc(y[i][j], p[i][j]),
               "brier": lambda j: brier(y[i][j], p[i][j]), "ece": lambda j: ece(y[i][j], p[i][j], cfg.ece_bins)}
        return bootstrap_metrics(fns, m[SUBJECT_ID].to_numpy()[i], min(cfg.n_boot, 100), cfg.seed)  # type: ignore[arg-type]

    out["_sub"] = (sub, y)
    return {k: v.to_dict() for k, v in metrics.items()}


def _eval_tte(m: pd.DataFrame, train: np.ndarray, cfg: ReportConfig, out: dict[str, Any]) -> dict[str, Any]:
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
        raise ValueError(f"predictions of model {m['model'].iloc[0]!r}: TTE task needs 'risk' or 'survival'+'times_days'")
    metrics, hs = tte_metrics(train, ev, dur, m[SUBJECT_ID].to_numpy(), risk, surv, grid, cfg.horizons, cfg.n_boot, cfg.seed)
    out["positives"] = int(ev.sum())
    out["horizons_days"] = hs
    out["_curves"] = {"km": kaplan_meier(ev, dur), "mean_surv": (grid, surv.mean(axis=0)) if surv is not None else None}

    def sub(i: np.ndarray) -> dict[str, MetricValue]:
        return bootstrap_metrics({"harrell_c": lambda j: harrell_c(ev[i][j], dur[i][j], risk[i][j])},
                                 m[SUBJECT_ID].to_numpy()[i], min(cfg.n_boot, 100), cfg.seed)

    out["_sub"] = (sub, ev)
    return {k: v.to_dict() for k, v in metrics.items()}


def _eval_forecast(m: pd.DataFrame, cfg: ReportConfig, out: dict[str, Any]) -> dict[str, Any]:
    pred = [list(v) for v in m["topk_codes"]]
    tgt = [list(v) if v is not None else [] for v in m["target_codes"]]
    metrics = forecast_metrics(pred, tgt, m[SUBJECT_ID].to_numpy(), cfg.k, cfg.n_boot, cfg.seed)

    def sub(i: np.ndarray) -> dict[str, MetricValue]:
        return forecast_metrics([pred[j] for j in i], [tgt[j] for j in i], m[SUBJECT_ID].to_numpy()[i], cfg.k, min(cfg.n_boot, 100), cfg.seed)

    out["_sub"] = (sub, None)
    out["_curves"] = {}
    return {k: v.to_dict() for k, v in metrics.items()}


def _oracle(truth: pd.DataFrame, task: str, held: pd.DataFrame, cfg: ReportConfig) -> dict[str, Any] | None:
    t = truth.loc[truth["task"] == task, [*KEY, "true_prob"]].copy()
    if t.empty:
        return None
    t["prediction_time"] = pd.to_datetime(t["prediction_time"])
    j = held.merge(t, on=KEY, how="inner")
    y, p = j["boolean_value"].astype(float).to_numpy(), j["true_prob"].astype(float).to_numpy()
    mv = bootstrap_metrics({"auroc": lambda i: auroc(y[i], p[i])}, j[SUBJECT_ID].to_numpy(), cfg.n_boot, cfg.seed)["auroc"]
    return {"n": len(j), "auroc": mv.to_dict()}


def evaluate_task(
    task: str, kind: TaskKind, labels: pd.DataFrame, preds: pd.DataFrame, attrs: pd.DataFrame, cfg: ReportConfig,
    truth: pd.DataFrame | None, plot_dir: Path,
) -> dict[str, Any]:
    """Metrics of every model on one task (labels with ``split``; preds in the contract). JSON-ready dict."""
    labels = labels.reset_index(drop=True).assign(_row=lambda d: np.arange(len(d)))
    held = labels[labels["split"] == cfg.eval_split]
    tr = labels[labels["split"] == TRAIN_SPLIT]
    train_surv = surv_array(tr["event"].to_numpy(), tr["duration_days"].to_numpy()) if kind == "tte" and len(tr) else None
    if kind == "tte" and train_surv is None:
        raise ValueError(f"task {task!r}: no train-split labels, needed to estimate censoring for IPCW metrics")
    res: dict[str, Any] = {"kind": kind, "n_labels": len(labels), "n_eval": len(held), "models": {}}
    pcols = [c for c in preds.columns if c not in ("split", "task")]
    raw: dict[str, dict[str, Any]] = {}
    for model, pm in preds.groupby("model", sort=True):
        m = held.merge(pm[pcols], on=KEY, how="inner").sort_values("_row")
        info: dict[str, Any] = {"n": len(m), "subjects": int(m[SUBJECT_ID].nunique()), "missing_predictions": len(held) - len(m)}
        if m.empty:
            info["metrics"] = {}
            info["note"] = "no predictions on the evaluation split"
            res["models"][model] = info
            continue
        if kind == "binary":
            tune = labels[labels["split"] == TUNING_SPLIT].merge(pm[pcols], on=KEY, how="inner")
            info["metrics"] = _eval_binary(m, tune, cfg, info)
        elif kind == "tte":
            assert train_surv is not None
            info["metrics"] = _eval_tte(m, train_surv, cfg, info)
        else:
            info["metrics"] = _eval_forecast(m, cfg, info)
        info["_rows"] = m["_row"].to_numpy()
        if kind == "binary":
            info["_p"] = m["prob"].astype(float).to_numpy()
        raw[str(model)] = info
        res["models"][model] = info
    res["subgroups"] = _subgroups(raw, labels, attrs, cfg)
    if kind == "binary":
        res["vs_baselines"] = _paired_auroc(raw, labels, cfg)
    if truth is not None and kind == "binary":
        res["oracle"] = _oracle(truth, task, held, cfg)
        if res["oracle"] is not None:
            o = res["oracle"]["auroc"]["value"]
            for info in res["models"].values():
                a = info.get("metrics", {}).get("auroc", {}).get("value")
                info["auroc_over_oracle"] = a / o if a is not None and o else None
    res["plots"] = _plots(task, kind, raw, plot_dir)
    for info in res["models"].values():
        for k in [k for k in info if k.startswith("_")]:
            del info[k]
    return res


def _auroc_delta(y: np.ndarray, pa: np.ndarray, pb: np.ndarray) -> Callable[[np.ndarray], float]:
    """Row indices -> AUROC(pa) - AUROC(pb) on those rows."""
    return lambda i: auroc(y[i], pa[i]) - auroc(y[i], pb[i])


def _paired_auroc(raw: dict[str, dict[str, Any]], labels: pd.DataFrame, cfg: ReportConfig) -> list[dict[str, Any]]:
    """AUROC(model) - AUROC(baseline) on the rows both predicted, with a paired cluster-bootstrap CI (the same
    resampled subjects for both): "beats the baseline" is claimed only when the CI excludes 0."""
    y_all = labels["boolean_value"].astype(float).to_numpy()
    subjects = labels[SUBJECT_ID].to_numpy()
    out: list[dict[str, Any]] = []
    for a in [m for m in raw if not m.startswith("baseline_")]:
        for b in [m for m in raw if m.startswith("baseline_")]:
            rows, ia, ib = np.intersect1d(raw[a]["_rows"], raw[b]["_rows"], return_indices=True)
            if not len(rows):
                continue
            mv = bootstrap_metrics({"delta": _auroc_delta(y_all[rows], raw[a]["_p"][ia], raw[b]["_p"][ib])},
                                   subjects[rows], cfg.n_boot, cfg.seed)["delta"]
            out.append({"model": a, "baseline": b, "n": len(rows), "delta_auroc": mv.to_dict()})
    return out


def _subgroups(raw: dict[str, dict[str, Any]], labels: pd.DataFrame, attrs: pd.DataFrame, cfg: ReportConfig) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for model, info in raw.items():
        sub, pos = info["_sub"]
        a = attrs.iloc[info["_rows"]].reset_index(drop=True)
        subj = labels[SUBJECT_ID].to_numpy()[info["_rows"]]
        for r in subgroup_table(a, subj, pos, sub, cfg.subgroup_min_n, cfg.subgroup_min_pos):
            key = (r["attribute"], r["group"])
            row = rows.setdefault(key, {k: r[k] for k in ("attribute", "group", "n", "subjects", "positives", "tiny")} | {"metrics": {}})
            row["metrics"][model] = r["metrics"]
    return list(rows.values())


def _plots(task: str, kind: TaskKind, raw: dict[str, dict[str, Any]], plot_dir: Path) -> list[str]:
    files: list[Path] = []
    curves = {m: i["_curves"] for m, i in raw.items()}
    if kind == "binary" and curves:
        files.append(plots.reliability_diagram({m: c["reliability"] for m, c in curves.items()}, f"{task}: reliability", plot_dir / f"{task}_reliability.png"))
        roc = {m: c["roc"] for m, c in curves.items() if c["roc"] is not None}
        if roc:
            files.append(plots.roc_plot(roc, f"{task}: ROC", plot_dir / f"{task}_roc.png"))
    if kind == "tte" and curves:
        km = next(iter(curves.values()))["km"]
        pred = {m: c["mean_surv"] for m, c in curves.items() if c["mean_surv"] is not None}
        files.append(plots.km_vs_predicted(km, pred, f"{task}: Kaplan–Meier vs predicted", plot_dir / f"{task}_km.png"))
    return [str(f.relative_to(plot_dir.parent)) for f in files]


def build_report(
    predictions: pd.DataFrame | str | Path | None,
    labels: dict[str, pd.DataFrame] | str | Path,
    meds_dir: str | Path,
    tasks: Sequence[str] | None,
    output_dir: str | Path,
    baselines: Sequence[str] = (),
    truth: pd.DataFrame | str | Path | None = None,
    config: ReportConfig | None = None,
    baseline_config: BaselineConfig | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate model predictions and/or baselines on ``tasks`` and write report.json / report.md / plots.

    predictions: DataFrame or parquet path in the ``ehrfm.evaluate`` contract, or None (baselines only);
    labels: ``<labels>/<task>.parquet`` folder or task -> DataFrame; meds_dir: MEDS root (splits, events);
    baselines: subset of lr, hgb, cox, rsf; truth: synthetic ``truth/index_events.parquet`` (oracle rows).
    Returns the report dict (as written to report.json).
    """
    cfg = config or ReportConfig()
    cfg.baselines = list(baselines)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    lab = load_labels(labels, list(tasks) if tasks else None) if isinstance(labels, (str, Path)) else dict(labels)
    if tasks:
        lab = {t: lab[t] for t in tasks}
    splits = load_splits(meds_dir)
    preds = pd.DataFrame(columns=["model", "task", *KEY])
    if predictions is not None:
        preds = validate_predictions(pd.read_parquet(predictions) if isinstance(predictions, (str, Path)) else predictions)
    if predictions is None and not baselines:
        raise ValueError("nothing to evaluate: give predictions and/or baselines")
    events = load_events(meds_dir, [SUBJECT_ID, "time", "code"], None if baselines else SUBGROUP_CODE_PREFIXES)
    truth_df = pd.read_parquet(truth) if isinstance(truth, (str, Path)) else truth
    report: dict[str, Any] = {"config": asdict(cfg), "tasks": {}}
    # predictions for tasks that have no labels here are not silently dropped: they are listed
    report["prediction_tasks_without_labels"] = sorted(set(preds["task"].astype(str)) - set(lab))
    base_frames = []
    for task in tqdm(list(lab), desc="evaluate", disable=not progress):
        labels_t = attach_split(lab[task], splits, task)
        kind = task_kind(labels_t, task)
        pt = preds[preds["task"] == task]
        if baselines:  # forecast tasks get the frequency baseline whenever baselines are asked for
            b = run_baselines(events, labels_t, task, kind, baselines, baseline_config)
            base_frames.append(b)
            pt = pd.concat([pt, b], ignore_index=True) if len(pt) else b
        attrs = subgroup_attributes(events, labels_t)
        report["tasks"][task] = evaluate_task(task, kind, labels_t, pt, attrs, cfg, truth_df, out / "plots")
    if base_frames:
        pd.concat(base_frames, ignore_index=True).to_parquet(out / "baseline_predictions.parquet")
    (out / "report.json").write_text(json.dumps(report, indent=1, default=_json_default, allow_nan=False))
    (out / "report.md").write_text(render_markdown(report))
    return report


def _json_default(o: object) -> object:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return None if math.isnan(float(o)) else float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o)}")
