"""Benchmark ``ehrfm.evaluate``: count-feature building at population scale, and the supervised
baselines end to end on the real MIMIC-IV demo (100 patients, ../shared/data/mimic-iv-demo-meds).

Part A (synthetic): n subjects x ~e events each, two label rows per subject; times CountFeaturizer
(3 windows + all history, train-only vocabulary) and LR / HGB fitting.
Part B (MIMIC-IV demo, MEDS-style file): 30-day readmission labels at each hospital discharge
(prediction_time = discharge; positive if another admission starts within 30 days; index stays ending in
death excluded) and all-cause mortality after discharge as time-to-event (censored at the last event);
subject splits 60/20/20 by subject_id % 5. These labels are computed here only for the benchmark — the
project's label engine (ehrfm.labels) is the source of truth for real tasks.

    python bench/evaluate_baselines.py                       # A: 10k subjects; B: MIMIC demo
    python bench/evaluate_baselines.py --subjects 2000 --skip-mimic
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ehrfm.evaluate import BaselineConfig, CountFeaturizer, ReportConfig, build_report
from ehrfm.evaluate.baselines import _binary, _prepare
from ehrfm.layout import Layout

MIMIC = Path(__file__).resolve().parents[
    1].parent / "shared" / "data" / "mimic-iv-demo-meds" / "mimic_iv_demo_meds_events.parquet"


def synthetic(n: int, e: int, codes: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame, np.ndarray]:
    """Events (n*e rows, Zipf-ish codes over ~3 years), two label rows per subject, 60% train mask."""
    rng = np.random.default_rng(seed)
    subj = np.repeat(np.arange(n, dtype=np.int64), e)
    t0 = np.datetime64("2018-01-01T00:00:00", "us")
    times = t0 + (rng.integers(0, 3 * 365 * 86400, n * e) * 1_000_000).astype("timedelta64[us]")
    code = np.minimum(rng.zipf(1.3, n * e), codes)
    events = pd.DataFrame({"subject_id": subj, "time": times, "code": [f"C//{c}" for c in code]})
    pt = t0 + (rng.integers(365 * 86400, 3 * 365 * 86400, 2 * n) * 1_000_000).astype("timedelta64[us]")
    rows = pd.DataFrame({"subject_id": np.repeat(np.arange(n, dtype=np.int64), 2), "prediction_time": pt})
    return events, rows, (rows["subject_id"].to_numpy() % 5 < 3)


def bench_features(n: int, e: int) -> dict[str, Any]:
    events, rows, train = synthetic(n, e, 5000)
    t = time.perf_counter()
    f = CountFeaturizer(min_count=5, max_codes=500)
    X = f.fit_transform(events, rows, train)
    t_feat = time.perf_counter() - t
    y = (np.asarray(X[:, 0].todense()).ravel() > 0).astype(float)  # any learnable target, for fit timing
    Xp = _prepare(X, train)
    tune = rows["subject_id"].to_numpy() % 5 == 3
    out = {"subjects": n, "events": len(events), "label_rows": len(rows), "features": X.shape[1],
           "featurize_s": t_feat}
    for name in ("lr", "hgb"):
        t = time.perf_counter()
        _binary(name, Xp, y, train, tune, BaselineConfig())
        out[f"{name}_fit_s"] = time.perf_counter() - t
    return out


def mimic_dataset(root: Path) -> tuple[Path, Path]:
    """MEDS dir + labels dir for the MIMIC demo (see module docstring)."""
    df = pd.read_parquet(MIMIC).rename(columns={"value": "numeric_value"})[["subject_id", "time", "code",
                                                                            "numeric_value"]]
    lay = Layout(root=str(root))
    meds = lay.meds_paths
    meds.data.mkdir(parents=True)
    meds.metadata.mkdir()
    df.to_parquet(meds.data / "part-0.parquet")
    sids = np.sort(df["subject_id"].unique())
    pd.DataFrame({"subject_id": sids,
                  "split": np.select([sids % 5 < 3, sids % 5 == 3], ["train", "tuning"],
                                     "held_out")}).to_parquet(meds.subject_splits)
    adm = df[df["code"].str.startswith("HOSPITAL_ADMISSION")].sort_values(["subject_id", "time"])
    dis = df[df["code"].str.startswith("HOSPITAL_DISCHARGE")].sort_values(["subject_id", "time"])
    death = df[df["code"] == "MEDS_DEATH"].groupby("subject_id")["time"].min()
    last = df.groupby("subject_id")["time"].max()
    rows = []
    for s, d in dis.groupby("subject_id"):
        starts = adm.loc[adm["subject_id"] == s, "time"].to_numpy()
        for t in d["time"].to_numpy():
            dt = death.get(s)
            if dt is not None and dt <= t + np.timedelta64(1, "D"):
                continue  # died in hospital / at discharge: not an index stay
            nxt = starts[starts > t]
            read = bool(len(nxt) and (nxt[0] - t) <= np.timedelta64(30, "D"))
            end = dt if dt is not None else last[s]
            rows.append({"subject_id": s, "prediction_time": t, "boolean_value": read,
                         "duration_days": max((end - t) / np.timedelta64(1, "D"), 0.01),
                         "event": int(dt is not None)})
    lab = pd.DataFrame(rows)
    lay.labels_dir.mkdir()
    lab[["subject_id", "prediction_time", "boolean_value"]].to_parquet(lay.label_table("readmission_30d"))
    tte = lab[["subject_id", "prediction_time", "duration_days", "event"]]
    tte.to_parquet(lay.label_table("mortality_tte"))
    return meds.root, lay.labels_dir


def bench_mimic(n_boot: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as d:
        meds, labels = mimic_dataset(Path(d))
        t = time.perf_counter()
        rep = build_report(None, labels, meds, None, Path(d) / "report", ["lr", "hgb", "cox", "rsf"],
                           config=ReportConfig(n_boot=n_boot), baseline_config=BaselineConfig(min_count=3),
                           progress=False)
        elapsed = time.perf_counter() - t
    out: dict[str, Any] = {"report_s": elapsed, "tasks": {}}
    for task, res in rep.to_dict()["tasks"].items():
        out["tasks"][task] = {"n_labels": res["n_labels"], "n_eval": res["n_eval"],
                              "models": {m: {k: v for k, v in i["metrics"].items()
                                             if k in ("auroc", "auprc", "prevalence", "harrell_c", "uno_c",
                                                      "ibs")}
                                         for m, i in res["models"].items()}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=300, help="events per subject")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--skip-mimic", action="store_true")
    args = ap.parse_args()
    res: dict[str, Any] = {"machine": platform.platform(), "cpus": __import__("os").cpu_count(),
                           "note": "shared CPU (2 cores, 8 engineers): timings are noisy upper bounds"}
    res["features"] = f = bench_features(args.subjects, args.events)
    print(f"{'subjects':>9} {'events':>10} {'rows':>7} {'features':>8} {'featurize s':>11} {'LR fit s':>9} "
          f"{'HGB fit s':>9}")
    print(f"{f['subjects']:>9} {f['events']:>10} {f['label_rows']:>7} {f['features']:>8} "
          f"{f['featurize_s']:>11.2f} {f['lr_fit_s']:>9.2f} {f['hgb_fit_s']:>9.2f}")
    if not args.skip_mimic:
        res["mimic_demo"] = m = bench_mimic(args.bootstrap)
        print(f"\nMIMIC-IV demo, held-out split, {args.bootstrap} cluster-bootstrap resamples (report built "
              f"in {m['report_s']:.1f} s)")
        print(f"{'task':<16}{'model':<14}{'n_eval':>7}  metrics")
        for task, r in m["tasks"].items():
            for model, mets in r["models"].items():
                txt = ", ".join(f"{k} {v['value']:.3f} ({v['ci_low']:.3f}-{v['ci_high']:.3f})"
                                if v.get("ci_low") is not None
                                else f"{k} {v.get('value')} ({v.get('reason')})" for k, v in mets.items())
                print(f"{task:<16}{model:<14}{r['n_eval']:>7}  {txt}")
    out = Path(__file__).resolve().parent / "results" / "evaluate_baselines.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
