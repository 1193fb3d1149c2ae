"""Population summaries of explanations: which codes carry the attribution of a task across many rows.

Per row, a code's attribution is the sum over that row's items with the code (events: code + value-bin
tokens; static codes; structure tokens under their own text, e.g. ``[W2]``); it is 0 when the row lacks
the code. A code's importance is the **mean |attribution| over all rows** (absent = 0), so a rare code with
large attributions and a common one with small attributions are on one scale; beside it the mean signed
attribution (direction), the share of rows holding the code and the mean |attribution| where present.
95% CIs: the subject-cluster bootstrap of :mod:`ehrfm.evaluate.bootstrap` (one subject's rows resampled
together), the same resamples for every code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ehrfm.evaluate.bootstrap import MetricValue, cluster_resample_indices

ROW_KEYS = ("task", "subject_id", "prediction_time", "row")
"""Columns that identify one explained row in the event table."""


def code_matrix(items: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, list[str]]:
    """Signed attribution per (row, code) from an event table (``row``, ``subject_id``, ``code``, ``kind``,
    ``attribution``): (rows: one per ``row`` with its ``subject_id``, matrix (n_rows, n_codes), codes)."""
    sums = items.groupby(["row", "code"], sort=True)["attribution"].sum()
    rows = items.drop_duplicates("row").sort_values("row")[["row", "subject_id"]].reset_index(drop=True)
    codes = sorted(items["code"].unique().tolist())
    r = rows["row"].searchsorted(sums.index.get_level_values(0))
    c = np.searchsorted(codes, sums.index.get_level_values(1))
    mat = np.zeros((len(rows), len(codes)))
    mat[r, c] = sums.to_numpy()
    return rows, mat, codes


def top_codes(items: pd.DataFrame, k: int, n_boot: int = 200, seed: int = 0,
              descriptions: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The ``k`` codes with the largest mean |attribution| over the rows of ``items`` (see the module
    docstring), best first, with their bootstrap CI, signed mean, presence and kind."""
    if items.empty:
        return []
    rows, mat, codes = code_matrix(items)
    absmat = np.abs(mat)
    mean_abs = absmat.mean(0)
    order = np.argsort(-mean_abs, kind="stable")[:k]
    groups = rows["subject_id"].to_numpy()
    rng = np.random.default_rng(seed)
    draws = [absmat[cluster_resample_indices(groups, rng)][:, order].mean(0) for _ in range(n_boot)]
    boot = np.stack(draws) if draws else np.empty((0, len(order)))
    kinds = items.drop_duplicates("code").set_index("code")["kind"]
    present = mat != 0
    out = []
    for j, ci in enumerate(order.tolist()):
        code = codes[ci]
        lo, hi = (np.quantile(boot[:, j], [0.025, 0.975]) if n_boot else (math.nan, math.nan))
        value = MetricValue(float(mean_abs[ci]), float(lo), float(hi), n_boot)
        n_present = int(present[:, ci].sum())
        out.append({"code": code, "description": (descriptions or {}).get(code), "kind": str(kinds[code]),
                    "mean_abs": value.to_dict(), "mean_signed": float(mat[:, ci].mean()),
                    "rows_with_code": n_present, "share_rows": n_present / len(rows),
                    "mean_abs_when_present": float(absmat[present[:, ci], ci].mean()) if n_present else None})
    return out


def completeness(rel_errors: Sequence[float], converged: Sequence[bool], steps: Sequence[int]
                 ) -> dict[str, Any]:
    """How well the completeness check held over a task's rows: median / 95th percentile / max relative
    error, rows within the tolerance, interpolation points used."""
    rel = np.asarray(rel_errors, dtype=float)
    if len(rel) == 0:
        return {"rows": 0}
    return {"rows": len(rel), "converged": int(np.sum(converged)), "median_rel_error": float(np.median(rel)),
            "p95_rel_error": float(np.quantile(rel, 0.95)), "max_rel_error": float(rel.max()),
            "steps": sorted({int(s) for s in steps})}


def markdown(result: Mapping[str, Any]) -> str:
    """``attributions.md``: per task the completeness check and the top codes table."""
    lines = ["# ehrfm attributions", "",
             "Integrated gradients on the summed input embedding (baseline: every explained token as [PAD]); "
             "output explained: the raw head output (binary: logit; time-to-event: logit of the risk by the "
             f"last horizon), before calibration. Split `{result['split']}`; importance = mean |attribution| "
             "over the rows (0 where a row lacks the code); 95% CIs: subject-cluster bootstrap, "
             f"{result['n_boot']} resamples.", ""]
    for task, t in result["tasks"].items():
        c = t["completeness"]
        lines += [f"## {task} ({t['target']})", "",
                  f"{c['rows']} rows; completeness |sum - (f(x) - f(baseline))| / |f(x) - f(baseline)|: "
                  f"median {c.get('median_rel_error', math.nan):.1e}, "
                  f"max {c.get('max_rel_error', math.nan):.1e}; "
                  f"{c.get('converged', 0)} of {c['rows']} within {result['tolerance']:g} "
                  f"(points: {c.get('steps', [])}).", "",
                  "| rank | code | description | kind | mean abs (95% CI) | mean signed | rows with code |",
                  "|---|---|---|---|---|---|---|"]
        for i, r in enumerate(t["top_codes"], 1):
            m = r["mean_abs"]
            ci = f" ({m['ci_low']:.4f}–{m['ci_high']:.4f})" if m.get("ci_low") is not None else ""
            lines.append(f"| {i} | `{r['code']}` | {r['description'] or ''} | {r['kind']} | "
                         f"{m['value']:.4f}{ci} | {r['mean_signed']:+.4f} | {r['rows_with_code']} "
                         f"({100 * r['share_rows']:.0f}%) |")
        lines.append("")
    return "\n".join(lines)
