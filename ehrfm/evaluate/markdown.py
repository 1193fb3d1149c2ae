"""Markdown rendering of a report dict (see ``ehrfm.evaluate.report.build_report``)."""

from __future__ import annotations

import math
from typing import Any

COLUMNS: dict[str, list[tuple[str, str]]] = {
    "binary": [("auroc", "AUROC"), ("auprc", "AUPRC"), ("prevalence", "prevalence"), ("brier", "Brier"),
               ("ece", "ECE"),
               ("sensitivity", "sens"), ("specificity", "spec"), ("ppv", "PPV"), ("f1", "F1")],
    "tte": [("harrell_c", "Harrell C"), ("uno_c", "Uno C"), ("mean_auc", "mean t-AUC"), ("ibs", "IBS")],
    "forecast": [],  # filled from the metric names (precision@k, recall@k)
}
PRIMARY = {"binary": "auroc", "tte": "harrell_c"}
RAW_COLUMNS = [("brier_raw", "Brier before cal."), ("ece_raw", "ECE before cal.")]
"""Binary tasks with a calibrated model (predictions with ``prob_raw``): the scores before calibration."""


def fmt(m: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.812 (0.780–0.843)`` from a MetricValue dict; ``NaN (reason)`` when undefined; ``–`` when absent."""
    if not m:
        return "–"
    v = m.get("value")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return f"NaN ({m['reason']})" if m.get("reason") else "NaN"
    if m.get("ci_low") is None:
        return f"{v:.{digits}f}"
    return f"{v:.{digits}f} ({m['ci_low']:.{digits}f}–{m['ci_high']:.{digits}f})"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown: per task a side-by-side model table, oracle row, subgroups, plots."""
    cfg = report["config"]
    lines = ["# ehrfm evaluation report", "",
             f"Split evaluated: `{cfg['eval_split']}`. 95% CIs: cluster bootstrap over subjects, "
             f"{cfg['n_boot']} resamples, seed {cfg['seed']}. Thresholds chosen on the tuning split "
             f"({cfg['threshold_rule']}); ECE with {cfg['ece_bins']} equal-mass bins.", ""]
    for task, res in report["tasks"].items():
        kind = res["kind"]
        lines += [f"## {task} ({kind})", "",
                  f"{res['n_labels']} labels, {res['n_eval']} on the evaluated split.", ""]
        cols = COLUMNS[kind] or [(k, k) for k in _metric_names(res)]
        if kind == "binary" and _calibrated(res):
            cols = [*cols, *RAW_COLUMNS]
        extra = ["threshold"] if kind == "binary" else (["events"] if kind == "tte" else [])
        header = ["model", "n", "subjects", *extra, *(c[1] for c in cols)]
        rows = []
        for model, info in res["models"].items():
            ex = [f"{info['threshold']:.3f}"] if kind == "binary" and "threshold" in info else (
                [str(info.get("positives", "–"))] if kind == "tte" else [])
            ex += ["–"] * (len(extra) - len(ex))
            rows.append([model, str(info["n"]), str(info["subjects"]), *ex,
                         *(fmt(info["metrics"].get(c[0])) for c in cols)])
        if res.get("oracle"):
            o = res["oracle"]
            rows.append(["**oracle (true_prob)**", str(o["n"]), "–", *["–"] * len(extra), fmt(o["auroc"]),
                         *["–"] * (len(cols) - 1)])
        lines += _table(header, rows) + [""]
        ratios = {m: i["auroc_over_oracle"] for m, i in res["models"].items()
                  if i.get("auroc_over_oracle") is not None}
        if ratios:
            lines += ["Model AUROC / oracle AUROC: " + ", ".join(f"{m} {r:.3f}" for m, r in ratios.items()),
                      ""]
        if res.get("vs_baselines"):
            lines += ["AUROC difference, model − baseline (paired subject bootstrap; a CI above 0 = beats "
                      "it): "
                      + ", ".join(f"{d['model']} − {d['baseline']} {fmt(d['delta_auroc'])}"
                                  for d in res["vs_baselines"]), ""]
        if kind == "tte":
            hs = next((i.get("horizons_days") for i in res["models"].values() if i.get("horizons_days")),
                      None)
            if hs:
                lines += [f"Time-dependent AUC horizons (days): {', '.join(f'{h:g}' for h in hs)}.", ""]
        lines += _subgroup_lines(res, kind)
        lines += _subgroup_calibration_lines(res)
        lines += [f"![{p}]({p})" for p in res.get("plots", [])] + [""]
    return "\n".join(lines)


def _metric_names(res: dict[str, Any]) -> list[str]:
    for info in res["models"].values():
        if info.get("metrics"):
            return list(info["metrics"])
    return []


def _subgroup_lines(res: dict[str, Any], kind: str) -> list[str]:
    if not res.get("subgroups"):
        return []
    models = list(res["models"])
    primary = PRIMARY.get(kind)
    header = ["attribute", "group", "n", "positives", "tiny", *models]
    rows = []
    for r in res["subgroups"]:
        cells = []
        for m in models:
            met = r["metrics"].get(m, {})
            key = primary or next(iter(met), None)
            cells.append(fmt(met.get(key)) if key else "–")
        pos = "–" if r["positives"] is None else str(r["positives"])
        rows.append([r["attribute"], r["group"], str(r["n"]), pos, "⚠ tiny" if r["tiny"] else "", *cells])
    metric = primary or "first metric"
    return [f"### Subgroups ({metric})", ""] + _table(header, rows) + [""]


def _calibrated(res: dict[str, Any]) -> list[str]:
    """Models of a task reported before and after calibration."""
    return [m for m, info in res["models"].items() if "ece_raw" in info.get("metrics", {})]


def _subgroup_calibration_lines(res: dict[str, Any]) -> list[str]:
    """ECE and Brier before -> after calibration per subgroup, for each calibrated model."""
    models = _calibrated(res)
    if not models or not res.get("subgroups"):
        return []
    header = ["attribute", "group", "n", "positives", "tiny"]
    for m in models:
        header += [f"{m} ECE before", "after", "Brier before", "after"]
    rows = []
    for r in res["subgroups"]:
        cells = []
        for m in models:
            met = r["metrics"].get(m, {})
            cells += [fmt(met.get(k)) for k in ("ece_raw", "ece", "brier_raw", "brier")]
        pos = "–" if r["positives"] is None else str(r["positives"])
        rows.append([r["attribute"], r["group"], str(r["n"]), pos, "⚠ tiny" if r["tiny"] else "", *cells])
    return ["### Subgroup calibration (before → after)", ""] + _table(header, rows) + [""]
