"""Where does the finetuned model lose to the oracle on readmission? Stack it with the planted ORDER signal.

The synthetic readmission risk (``ehrfm.synth.risk.readmission_logit``) is dominated by one temporal feature,
the creatinine trend (last minus first of the last three values at or before discharge), plus count-like
features (chronic conditions, prior admissions, age). This script recomputes the trend from the MEDS events of
a ``bench/finetune_oracle.py`` root and reports, on the held-out readmission rows:

* AUROC of the model, of the count HGB baseline, of the trend alone, and of the oracle;
* AUROC of a logistic stack ``[model logit, trend]`` and ``[HGB logit, trend]`` (fitted on the held-out rows
  themselves: an upper bound on what adding the trend could give, not a model to ship);
* the correlation of each score with the trend.

If ``HGB + trend`` reaches the oracle while ``model + trend`` does not, the model has learnt the trend only
partly AND represents the count features less well than the counts themselves.

    .venv/bin/python bench/oracle_gap.py --root /tmp/v30b --variant full
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TASK = "readmission_30d"


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(q / (1 - q))


def trend_at(events: pd.DataFrame, rows: pd.DataFrame) -> np.ndarray:
    """Clipped creatinine trend of each row from the creatinine events at or before its prediction_time."""
    from ehrfm.synth.risk import creatinine_trend

    by_subject = {s: d for s, d in events.sort_values("time").groupby("subject_id")}
    out = np.zeros(len(rows))
    for i, (s, t) in enumerate(zip(rows["subject_id"], rows["prediction_time"], strict=True)):
        d = by_subject.get(s)
        if d is not None:
            vals = d["numeric_value"].to_numpy()[d["time"].to_numpy() <= np.datetime64(t)][-3:]
            out[i] = float(np.clip(creatinine_trend(tuple(float(v) for v in vals)), -1.5, 1.5))
    return out


def analyse(root: Path, variant: str) -> dict[str, Any]:
    """Scores and stacks on the held-out readmission rows of ``root``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from ehrfm.evaluate.data import load_events
    from ehrfm.synth.catalog import LABS

    keys = ["subject_id", "prediction_time"]
    pred = pd.read_parquet(root / f"finetune_{variant}" / "predictions.parquet")
    pred = pred[(pred["task"] == TASK) & (pred["split"] == "held_out")][[*keys, "prob"]]
    base = pd.read_parquet(root / "report_baselines" / "baseline_predictions.parquet")
    base = base[(base["task"] == TASK) & (base["model"] == "baseline_hgb")][[*keys, "prob"]]
    labels = pd.read_parquet(root / "labels" / f"{TASK}.parquet")[[*keys, "boolean_value"]]
    truth = pd.read_parquet(root / "synth" / "truth" / "index_events.parquet")
    truth = truth[truth["task"] == TASK][["subject_id", "prediction_time", "true_prob"]]
    rows = (pred.merge(base, on=keys, suffixes=("", "_hgb")).merge(labels, on=keys)
            .merge(truth, on=keys, how="left"))
    creat = load_events(root / "meds", code_prefixes=[f"LAB//LOINC//{LABS['creatinine'].code}"])
    rows["trend"] = trend_at(creat, rows)
    y = rows["boolean_value"].astype(int).to_numpy()
    scores = {"model": _logit(rows["prob"].to_numpy()), "baseline_hgb": _logit(rows["prob_hgb"].to_numpy()),
              "trend": rows["trend"].to_numpy()}
    out: dict[str, Any] = {"n": int(len(rows)), "prevalence": float(y.mean()),
                           "auroc": {k: float(roc_auc_score(y, v)) for k, v in scores.items()},
                           "corr_with_trend": {k: float(np.corrcoef(scores[k], scores["trend"])[0, 1])
                                               for k in ("model", "baseline_hgb")}}
    has_truth = rows["true_prob"].notna().to_numpy()
    out["auroc"]["oracle"] = float(roc_auc_score(y[has_truth], rows["true_prob"].to_numpy()[has_truth]))
    for name in ("model", "baseline_hgb"):
        x = np.column_stack([scores[name], scores["trend"]])
        stack = LogisticRegression().fit(x, y)
        out["auroc"][f"{name} + trend (stack)"] = float(roc_auc_score(y, stack.decision_function(x)))
    return out


def main(argv: list[str] | None = None) -> int:
    """Parse flags, analyse, print, write JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True,
                    help="a bench/finetune_oracle.py --root after its run")
    ap.add_argument("--variant", default="full")
    ap.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "oracle_gap.json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    res = analyse(args.root, args.variant)
    print(f"{TASK} held-out: n={res['n']}, prevalence {res['prevalence']:.3f}")
    for k, v in res["auroc"].items():
        print(f"  AUROC {k:<30}{v:.3f}")
    for k, v in res["corr_with_trend"].items():
        print(f"  corr({k}, trend) {v:.2f}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"root": str(args.root), "variant": args.variant, **res}, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
