"""Tables and curves over ``ehrfm.evaluate`` reports for notebooks 04 and 05: metrics side by side,
held-out rows with each model's score, subgroup metrics, Kaplan–Meier per group, mean predicted survival."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ehrfm.evaluate import harrell_c, kaplan_meier, subgroup_attributes
from ehrfm.evaluate.bootstrap import DegenerateMetric
from ehrfm.evaluate.data import KEY, attach_split, load_events, load_labels, load_splits, task_kind
from ehrfm.evaluate.report import Report
from ehrfm.evaluate.subgroups import SUBGROUP_CODE_PREFIXES


def _fmt(m: dict[str, Any]) -> str:
    v, lo, hi = m.get("value"), m.get("ci_low"), m.get("ci_high")
    if v is None:
        return f"NaN ({m.get('reason') or 'undefined'})"
    return f"{v:.3f}" if lo is None or hi is None else f"{v:.3f} ({lo:.3f}–{hi:.3f})"


def _plain(report: Report | dict[str, Any]) -> dict[str, Any]:
    """``report.json`` content of a :class:`~ehrfm.evaluate.report.Report` (dicts pass through)."""
    return report if isinstance(report, dict) else report.to_dict()


def metrics_table(report: Report | dict[str, Any], metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (task, model): n and each requested metric as ``value (CI)`` (all metrics when None)."""
    rows: list[dict[str, Any]] = []
    for task, t in _plain(report)["tasks"].items():
        for model, info in t["models"].items():
            r: dict[str, Any] = {"task": task, "model": model, "n": info.get("n")}
            for name, m in info.get("metrics", {}).items():
                if metrics is None or name in metrics:
                    r[name] = _fmt(m)
            rows.append(r)
    return pd.DataFrame(rows)


def subgroup_frame(report: Report | dict[str, Any], tasks: str | Sequence[str],
                   metric: str = "auroc") -> pd.DataFrame:
    """Subgroup rows of the tasks: task, attribute, group, n, positives, tiny flag and ``metric`` per model
    (NaN where the metric is undefined in the group)."""
    rows = []
    for task in [tasks] if isinstance(tasks, str) else tasks:
        for g in _plain(report)["tasks"][task].get("subgroups", []):
            r = {"task": task} | {k: g[k] for k in ("attribute", "group", "n", "positives", "tiny")}
            for model, ms in g["metrics"].items():
                v = (ms.get(metric) or {}).get("value")
                r[model] = float("nan") if v is None else float(v)
            rows.append(r)
    return pd.DataFrame(rows)


def oracle_table(report: Report | dict[str, Any]) -> pd.DataFrame:
    """Per task: rows scored by the synthetic truth's planted risk and their AUROC (the reachable ceiling)."""
    rows = []
    for task, t in _plain(report)["tasks"].items():
        o = t.get("oracle")
        rows.append({"task": task, "n": o["n"] if o else 0,
                     "oracle_auroc": _fmt(o["auroc"]) if o else "no truth rows"})
    return pd.DataFrame(rows)


def scored_rows(labels_dir: str | Path, meds_dir: str | Path, task: str,
                predictions: Sequence[str | Path | pd.DataFrame | None],
                split: str = "held_out") -> pd.DataFrame:
    """The task's labels on ``split`` joined to every model's prediction rows (long: one row per model).

    predictions: parquet paths or frames in the ``ehrfm.evaluate`` contract (None entries are skipped),
    e.g. the finetune run's predictions.parquet and a report's baseline_predictions.parquet.
    """
    lab = attach_split(load_labels(labels_dir, [task])[task], load_splits(meds_dir), task)
    lab = lab[lab["split"] == split].drop(columns="split")
    frames = [pd.read_parquet(p) if isinstance(p, (str, Path)) else p for p in predictions if p is not None]
    if not frames:
        raise ValueError("scored_rows(): no predictions given")
    pred = pd.concat(frames, ignore_index=True)
    pred = pred[pred["task"] == task].drop(columns=["task", "split"], errors="ignore")
    pred["prediction_time"] = pd.to_datetime(pred["prediction_time"])
    lab["prediction_time"] = pd.to_datetime(lab["prediction_time"])
    return lab.merge(pred, on=KEY, how="inner")


def subject_outcome(labels_dir: str | Path, task: str) -> pd.Series:
    """Per subject: 1 when any of its rows of ``task`` is positive (binary) or an event (time-to-event)."""
    lab = load_labels(labels_dir, [task])[task]
    # label tables carry every value column; the kind says which one holds the label
    kind = task_kind(lab, task)
    if kind == "forecast":
        raise ValueError(f"task {task!r} is a forecast task: no single outcome per subject")
    col = "boolean_value" if kind == "binary" else "event"
    # null labels (e.g. censored before the horizon) count as negative here
    value = pd.to_numeric(lab[col], errors="coerce").fillna(0)
    return value.groupby(lab["subject_id"]).max().astype(int).rename(task)


def tte_labels_with_groups(labels_dir: str | Path, meds_dir: str | Path, task: str) -> pd.DataFrame:
    """A time-to-event task's labels with ``split`` and subgroup attributes (age_band, sex, ... as
    available)."""
    lab = attach_split(load_labels(labels_dir, [task])[task], load_splits(meds_dir),
                       task).reset_index(drop=True)
    # label tables carry every value column; the kind says which one holds the label
    if task_kind(lab, task) != "tte":
        raise ValueError(f"task {task!r} is not time-to-event (needs duration_days and event)")
    events = load_events(meds_dir, ["subject_id", "time", "code"], SUBGROUP_CODE_PREFIXES)
    return pd.concat([lab, subgroup_attributes(events, lab)], axis=1)


def km_by_group(labels: pd.DataFrame, by: str, min_rows: int = 5) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Kaplan–Meier (times, S) per value of column ``by`` (groups under ``min_rows`` rows are left out)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for g, d in labels.groupby(by, sort=True):
        if len(d) >= min_rows:
            out[str(g)] = kaplan_meier(d["event"].to_numpy(), d["duration_days"].to_numpy())
    return out


def mean_survival(rows: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per model: (grid (g,), mean predicted S (g,)) over ``rows`` with ``survival`` and ``times_days``
    lists."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for model, d in rows.dropna(subset=["survival"]).groupby("model", sort=True):
        grid = np.asarray(d["times_days"].iloc[0], dtype=float)
        out[str(model)] = (grid, np.stack([np.asarray(s, dtype=float) for s in d["survival"]]).mean(0))
    return out


def harrell_by_model(rows: pd.DataFrame) -> pd.Series:
    """Harrell's C per model over ``rows`` (event, duration_days, risk); NaN where it is undefined
    (no events, no comparable pairs), as small splits often are."""
    out: dict[str, float] = {}
    for model, d in rows.dropna(subset=["risk"]).groupby("model", sort=True):
        try:
            out[str(model)] = harrell_c(d["event"].to_numpy(), d["duration_days"].to_numpy(),
                                        d["risk"].to_numpy())
        except DegenerateMetric:
            out[str(model)] = float("nan")
    return pd.Series(out, name="harrell_c", dtype=float)
