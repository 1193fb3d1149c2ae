"""Do integrated-gradients attributions recover the planted signal? Oracle validation on synthetic patients.

The synthetic risk formulas are known (docs/synthetic_population.md, ``ehrfm/synth/risk.py``), so for every
explained held-out row we know which of its tokens carry planted features. Per task we measure the share of
attribution mass (sum of |attribution| over the row's items: events = code + value-bin tokens, static codes,
structure tokens) that falls on planted-feature items, against the share of the row's tokens those items
hold. ``enrichment`` = mean mass share / mean token share (1 = no better than spreading attribution by
token count). The null: a random-weights model of the same architecture and heads, untrained, explained the
same way.

Planted-feature items (what the formulas read; times from the rows, order within the row):

* ``readmission_30d`` (prediction at discharge): ``creatinine_last3`` the last three creatinine events
  (``LAB//LOINC//2160-0``, the trend); ``chronic`` heart failure I50.9, COPD J44.9, CKD N18.3, diabetes E11.9;
  ``prior_admissions`` inpatient admission starts in the 365 days before the index admission;
  ``stay`` the index admission's start and end (length of stay) and a principal diagnosis I50.23/J44.1.
* ``mortality_inhospital`` (admission + 24 h): ``creatinine`` the first creatinine of the stay and the (at
  most) two before the admission (the jump); ``chronic`` I50.9, N18.3; ``admission_panel`` the stay's first
  sodium, potassium, hemoglobin and heart rate; ``dx`` a principal diagnosis A41.9/I21.4/K92.2/J18.9.

``history`` is the union of the creatinine, chronic-condition and prior-admission groups (the features
issue 18 names); ``planted`` the union of all groups. Age enters every token through the age stream and has
no token of its own: it is not counted. A recurrent model's output (trained or not) depends most on the last
tokens before the prompt, where the index stay's own events sit: ``trained_over_null`` (the trained model's
mass share over the null's, same rows) separates what training put on a feature from where it sits.

Pipeline (each step skipped when its output exists under ``--root``): ``bench/finetune_oracle.py``'s data
and pretraining steps (synth seed 0 -> ingest -> label -> prepare -> tokenize -> pretrain), then ``ehrfm
finetune`` on the two tasks. ``--latency`` also times serving real ~1,000-event patients with and without
explanations; ``--latency-only`` re-times only that (the trained model must exist under ``--root``) and
replaces the ``latency`` block of ``--output`` (``latency_<n>_threads`` with ``--threads n``), keeping the
rest of the file.

    .venv/bin/python bench/attributions.py --root /tmp/e_attr/root --n-patients 4000 --rows 300
    .venv/bin/python bench/attributions.py --root /tmp/e_attr/root --latency 5 --latency-only
    .venv/bin/python bench/attributions.py --root /tmp/e_attr/root --latency 5 --latency-only --threads 2
    python bench/attributions.py --root <root> --latency 5 --latency-only --device cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ehrfm.explain.aggregate import STRUCTURE, EventAttribution  # noqa: E402
from ehrfm.layout import Layout  # noqa: E402


def _bench(name: str) -> Any:
    """Another bench script as a module, loaded by path (bench/ stays off the import path: some of its scripts
    are named like library modules)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TASKS = ("readmission_30d", "mortality_inhospital")
CREATININE = "LAB//LOINC//2160-0"
ADMIT = "ENCOUNTER//INPATIENT//START"
DISCHARGE = "ENCOUNTER//INPATIENT//END"


def _icd(*codes: str) -> set[str]:
    return {f"DIAGNOSIS//ICD//10//{c}" for c in codes}


Items = Sequence[EventAttribution]
Grouper = Callable[[Items], dict[str, set[int]]]


def _stay_start(items: Items) -> pd.Timestamp | None:
    """Start of the index stay: the last inpatient admission start of the row."""
    starts = [e.time for e in items if e.code == ADMIT and e.time is not None]
    return starts[-1] if starts else None


def _when(e: EventAttribution) -> pd.Timestamp:
    return e.time if e.time is not None else pd.Timestamp.min


def readmission_groups(items: Items) -> dict[str, set[int]]:
    """Indices (into ``items``) of the planted features of one readmission row. Times, not row order, place
    an event in the stay: a stay's principal diagnosis shares the admission time and sorts before it."""
    creat = [i for i, e in enumerate(items) if e.code == CREATININE]
    start = _stay_start(items)
    prior: set[int] = set()
    stay: set[int] = set()
    if start is not None:
        prior = {i for i, e in enumerate(items) if e.code == ADMIT and _when(e) < start
                 and (start - _when(e)).days < 365}
        stay = {i for i, e in enumerate(items) if _when(e) >= start
                and (e.code in (ADMIT, DISCHARGE) or e.code in _icd("I50.23", "J44.1"))}
    return {"creatinine_last3": set(creat[-3:]),
            "chronic": {i for i, e in enumerate(items) if e.code in _icd("I50.9", "J44.9", "N18.3", "E11.9")},
            "prior_admissions": prior, "stay": stay}


def mortality_groups(items: Items) -> dict[str, set[int]]:
    """Indices (into ``items``) of the planted features of one in-hospital mortality row."""
    start = _stay_start(items)
    chronic = {i for i, e in enumerate(items) if e.code in _icd("I50.9", "N18.3")}
    out: dict[str, set[int]] = {"creatinine": set(), "admission_panel": set(), "dx": set(),
                                "chronic": chronic}
    if start is None:
        return out
    before = [i for i, e in enumerate(items) if e.code == CREATININE and _when(e) < start]
    after = [i for i, e in enumerate(items) if e.code == CREATININE and _when(e) >= start]
    out["creatinine"] = set(before[-2:]) | set(after[:1])
    for code in ("LAB//LOINC//2951-2", "LAB//LOINC//2823-3", "LAB//LOINC//718-7", "VITAL//LOINC//8867-4"):
        first = next((i for i, e in enumerate(items) if e.code == code and _when(e) >= start), None)
        if first is not None:
            out["admission_panel"].add(first)
    dx = _icd("A41.9", "I21.4", "K92.2", "J18.9")
    out["dx"] = {i for i, e in enumerate(items) if e.code in dx and _when(e) >= start}
    return out


GROUPS: dict[str, Grouper] = {"readmission_30d": readmission_groups, "mortality_inhospital": mortality_groups}
TOP = 5
"""A group is "in the top" of a row when one of its items is among the row's TOP events by |attribution|."""


HISTORY = ("creatinine_last3", "creatinine", "chronic", "prior_admissions")
"""The features issue 18 names (creatinine values and trend, chronic conditions, prior admissions): their
union is ``history``; ``planted`` is the union of every group, the index stay's own events included."""


def row_shares(items: Items, groups: dict[str, set[int]]) -> dict[str, tuple[float, float, float]]:
    """Per group and for the unions ``history`` and ``planted``: (mass share, token share, in the top-5
    events: 1/0, NaN when the row has none of the group) of one row."""
    mass = np.array([abs(e.attribution) for e in items])
    tokens = np.array([len(e.positions) for e in items], dtype=float)
    events = [i for i in np.argsort(-mass, kind="stable").tolist() if items[i].kind != STRUCTURE][:TOP]
    out = {}
    unions = {"history": set().union(*(v for k, v in groups.items() if k in HISTORY)),
              "planted": set().union(*groups.values())}
    for name, idx in {**groups, **unions}.items():
        sel = np.zeros(len(items), dtype=bool)
        sel[list(idx)] = True
        top = float(bool(idx & set(events))) if idx else float("nan")
        out[name] = (float(mass[sel].sum() / max(mass.sum(), 1e-12)), float(tokens[sel].sum() / tokens.sum()),
                     top)
    return out


def _ratio(a: np.ndarray, b: np.ndarray) -> float:
    return float(a.mean() / max(b.mean(), 1e-12))


def compare(shares: dict[str, pd.DataFrame], n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per group: token share, and per model the mass share, enrichment (mass share / token share) and top-5
    rate, plus ``trained_over_null`` (mass share of the trained model / the null's on the same rows), with
    subject-bootstrap 95% CIs (the same resampled subjects for every group and model: paired)."""
    from ehrfm.evaluate.bootstrap import cluster_resample_indices

    frames = {m: f.sort_values(["group", "row"], kind="stable") for m, f in shares.items()}
    first = next(iter(frames.values()))
    subjects = first[first["group"] == "planted"]["subject_id"].to_numpy()  # one entry per row, row order
    rng = np.random.default_rng(seed)
    draws = [cluster_resample_indices(subjects, rng) for _ in range(n_boot)]

    def ci(num: np.ndarray, den: np.ndarray) -> list[float]:
        """95% CI of ``_ratio(num, den)`` over the resampled subjects."""
        vals = [_ratio(num[d], den[d]) for d in draws]
        return [float(x) for x in np.quantile(vals, [0.025, 0.975])] if vals else [math.nan, math.nan]

    out: dict[str, dict[str, Any]] = {}
    for name in first["group"].unique():
        cols = {m: f[f["group"] == name] for m, f in frames.items()}
        tok = first[first["group"] == name]["token_share"].to_numpy()
        rec: dict[str, Any] = {"token_share": float(tok.mean()), "rows_with_group": int((tok > 0).sum())}
        for m, g in cols.items():
            mass, top = g["mass_share"].to_numpy(), g["top5"].to_numpy()
            rec[m] = {"mass_share": float(mass.mean()), "enrichment": _ratio(mass, tok),
                      "enrichment_ci": ci(mass, tok),
                      "top5_rate": float(np.nanmean(top)) if np.isfinite(top).any() else None}
        if "trained" in cols and "random_weights" in cols:
            a = cols["trained"]["mass_share"].to_numpy()
            b = cols["random_weights"]["mass_share"].to_numpy()
            rec["trained_over_null"] = _ratio(a, b)
            rec["trained_over_null_ci"] = ci(a, b)
        out[str(name)] = rec
    return out


def random_model(trained: Any, seed: int) -> Any:
    """The null: the trained model's architecture and heads, freshly initialised (untrained)."""
    import torch

    from ehrfm.models import EHRFoundationModel
    from ehrfm.train.heads import TaskHeads
    from ehrfm.train.predict import FinetunedModel

    torch.manual_seed(seed)
    model = EHRFoundationModel(trained.model.config).eval()
    heads = TaskHeads(trained.specs, trained.model.config.d_model, trained.heads.shared_head, 0.0).eval()
    return FinetunedModel(model, heads, trained.vocab, trained.specs, "random_weights")


def explain_task(fm: Any, task: str, rows: list[dict[str, Any]], ig: Any) -> tuple[pd.DataFrame, list[Any]]:
    """Shares per (row, group) and the explanations of ``rows``."""
    from ehrfm.explain.explainer import explain_rows

    spec = next(s for s in fm.specs if s.task == task)
    explained = explain_rows(fm, spec, rows, ig)
    recs = []
    for j, (row, ex) in enumerate(zip(rows, explained, strict=True)):
        for name, (m, t, top) in row_shares(ex.events, GROUPS[task](ex.events)).items():
            recs.append({"row": j, "subject_id": int(row["subject_id"]), "group": name, "mass_share": m,
                         "token_share": t, "top5": top})
    return pd.DataFrame(recs), explained


def _auroc(y: Any, score: Any) -> float | None:
    from sklearn.metrics import roc_auc_score

    y_arr = np.asarray(y, dtype=float)
    return float(roc_auc_score(y_arr, score)) if len(np.unique(y_arr[~np.isnan(y_arr)])) == 2 else None


def oracle_auroc(layout: Layout, task: str, rows: list[dict[str, Any]], times: list[Any]) -> float | None:
    """AUROC of the planted ``true_prob`` on the same rows (joined on subject and prediction time)."""
    table = pd.read_parquet(layout.truth)
    truth = table[table["task"] == task].set_index(["subject_id", "prediction_time"])["true_prob"].to_dict()
    keys = [(int(r["subject_id"]), pd.Timestamp(t)) for r, t in zip(rows, times, strict=True)]
    probs = np.array([float(truth.get(k, np.nan)) for k in keys])
    ok = ~np.isnan(probs)
    y = np.asarray([r["label"] for r in rows], dtype=float)[ok]
    return _auroc(y, probs[ok])


def finetune(root: Path, steps: int, sets: list[str]) -> None:
    """``ehrfm finetune`` on the two tasks from the shared pretraining (skipped when its model exists)."""
    lay = Layout(root=str(root))
    if (lay.finetune_run.model / "heads.json").exists():
        return
    oracle = _bench("finetune_oracle")
    oracle._ehrfm("finetune", "--root", str(root), "--pretrained", str(lay.pretrain_run.root),
           "--tasks", f"[{','.join(TASKS)}]", "--model_name", "ehrfm_attr", "--trainer.progress_bar", "false",
           "--trainer.max_steps", str(steps), "--trainer.val_check_interval", str(max(steps // 6, 50)),
           "--patience", "0", *oracle._overrides(sets))


BEFORE_IG = {"steps": 8, "max_steps": 32, "method": "gauss"}
"""Served explanations before nested Clenshaw-Curtis refinement and the CPU scan chunk of 32 (2026-12-05
morning): Gauss-Legendre 8 points refined to 16 and 32 afresh, scan chunks of 64 on the CPU."""
BEFORE_CPU_CHUNK = 64


def latency(root: Path, repeats: int, n_bundles: int = 3, before: bool = True,
            device: str | None = None) -> dict[str, Any]:
    """Serving real Synthea patients with ~1,000 events (``bench/serve.py``'s mid-size bundles): in-process
    ``predict_frame`` wall time without explanations (``off``), with them as served now (``on``), with
    ``before`` also with the earlier settings (:data:`BEFORE_IG`, CPU chunk 64: ``on_before``), interleaved in
    one process, median per bundle, on torch's intra-op threads as set by the caller; ``device``: where the
    served model runs (default ``$EHRFM_SERVE_DEVICE``, else the CPU)."""
    import tempfile

    import torch

    from ehrfm.config.explain import IGSettings
    from ehrfm.serve.core import Scorer, build_serving_dir
    from ehrfm.serve.pyfunc import predict_frame

    lay = Layout(root=str(root))
    bundles = _bench("serve").mid_bundles(n_bundles)
    per_bundle = []
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        scorer = Scorer(build_serving_dir(lay.finetune_run.model, Path(tmp) / "serving",
                                          tokens_dir=lay.token_paths.root), device=device)
        now_ig, model_cfg = scorer.config.explain_ig, scorer.fm.model.config
        now_chunk = model_cfg.cpu_chunk_size
        # mode -> (IG settings, CPU scan chunk); None: no explanations
        modes: dict[str, tuple[IGSettings, int] | None] = {"off": None, "on": (now_ig, now_chunk)}
        if before:
            modes["on_before"] = (IGSettings(**{**now_ig.to_dict(), **BEFORE_IG}), BEFORE_CPU_CHUNK)
        for text, n_events in bundles:
            times: dict[str, list[float]] = {m: [] for m in modes}
            outs: dict[str, Any] = {}
            for r in range(repeats + 1):
                for mode, setting in modes.items():
                    if setting is not None:
                        scorer.config.explain_ig, model_cfg.cpu_chunk_size = setting
                    t0 = time.perf_counter()
                    outs[mode] = predict_frame(scorer, [{"bundle": text, "explain": setting is not None,
                                                         "tasks": ",".join(TASKS)}])
                    if r:  # the first round warms up
                        times[mode].append(time.perf_counter() - t0)
            scorer.config.explain_ig, model_cfg.cpu_chunk_size = now_ig, now_chunk
            med = {k: float(np.median(v)) for k, v in times.items()}
            row: dict[str, Any] = {"events": n_events, "median_s": med, "ratio": med["on"] / med["off"]}
            for mode in list(modes)[1:]:
                ex = [json.loads(e) for e in outs[mode]["explanation"] if e]
                suffix = "" if mode == "on" else "_before"
                row.update({f"rel_errors{suffix}": [e["rel_error"] for e in ex],
                            f"steps{suffix}": [e["steps"] for e in ex],
                            f"converged{suffix}": [e["converged"] for e in ex]})
                if mode == "on":
                    row.update({"referenced_events": sum(1 for e in ex for v in e["events"] if v["resource"]),
                                "listed_events": sum(len(e["events"]) for e in ex)})
                else:
                    row[f"ratio{suffix}"] = med[mode] / med["off"]
            per_bundle.append(row)
        ig = now_ig.to_dict()
    block: dict[str, Any] = {"bundles": per_bundle, "repeats": repeats, "ig": ig, "cpu_chunk_size": now_chunk,
                             "torch_threads": threads, "device": str(scorer.device),
                             "row_tokens": scorer.tokenize_cfg.max_len,
                             "ratio_median": float(np.median([b["ratio"] for b in per_bundle]))}
    if before:
        block.update({"before": {"ig": BEFORE_IG, "cpu_chunk_size": BEFORE_CPU_CHUNK},
                      "ratio_before_median": float(np.median([b["ratio_before"] for b in per_bundle]))})
    return block


def latency_key(threads: int, device: str | None = None) -> str:
    """The result file's block for serving timed with ``threads`` torch threads (``latency`` for one) on
    ``device`` (``_cuda`` appended for a GPU)."""
    key = "latency" if threads == 1 else f"latency_{threads}_threads"
    return key if device in (None, "cpu") else f"{key}_{str(device).replace(':', '')}"


def latency_only(root: Path, repeats: int, output: Path, threads: int = 1, device: str | None = None) -> int:
    """Re-time serving alone (:func:`latency`) and replace the ``latency`` block of ``output`` for this
    thread count (the rest of the file, from a full run, is kept; the machine's load is recorded next to the
    timings)."""
    load0 = os.getloadavg()
    block = latency(root, repeats, before=threads == 1, device=device)
    block["machine"] = {"cpus": os.cpu_count(), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
                        "shared": True, "torch_threads": threads}
    result = json.loads(output.read_text()) if output.exists() else {}
    result[latency_key(threads, device)] = block
    print_latency(block)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse flags, build or reuse the pipeline, explain both models, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--n-patients", type=int, default=4000)
    ap.add_argument("--master", default="local[2]")
    ap.add_argument("--pretrain-steps", type=int, default=2000)
    ap.add_argument("--finetune-steps", type=int, default=3000)
    ap.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--rows", type=int, default=300, help="held-out rows explained per task")
    ap.add_argument("--steps", type=int, default=16, help="integrated-gradients points (first try)")
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--latency", type=int, default=0, metavar="REPEATS", help="also time serving (0: skip)")
    ap.add_argument("--latency-only", action="store_true",
                    help="only the serving timing (default 5 repeats): rewrite the latency block of --output")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads of the run (the latency block records them)")
    ap.add_argument("--device", default=None,
                    help="the served model's device for --latency: cpu, cuda, auto (default: env)")
    ap.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "attributions.json")
    args = ap.parse_args(argv)
    import torch

    from ehrfm.config.explain import IGSettings
    from ehrfm.data import TokenStreamDataset
    from ehrfm.train.predict import FinetunedModel

    torch.set_num_threads(args.threads)
    if args.latency_only:
        return latency_only(args.root, args.latency or 5, args.output, args.threads, args.device)
    load0, t0 = os.getloadavg(), time.time()
    _bench("finetune_oracle").prepare_data(args.root, args.n_patients, args.master,
                                           [f"trainer.max_steps={args.pretrain_steps}",
                                            "trainer.val_check_interval=500"])
    finetune(args.root, args.finetune_steps, args.finetune_set)
    lay = Layout(root=str(args.root))
    trained = FinetunedModel.load(lay.finetune_run.model)
    models = {"trained": trained, "random_weights": random_model(trained, args.seed)}
    ig = IGSettings(steps=args.steps, max_steps=max(64, args.steps))
    result: dict[str, Any] = {"n_patients": args.n_patients, "rows_per_task": args.rows, "ig": ig.to_dict(),
                              "model": trained.model.config.to_dict(),
                              "finetune_steps": args.finetune_steps, "pretrain_steps": args.pretrain_steps,
                              "tasks": {}}
    for task in TASKS:
        ds = TokenStreamDataset(lay.token_paths.task(task), split="held_out", task=task)
        rng = np.random.default_rng(args.seed)
        pick = np.sort(rng.choice(len(ds), min(args.rows, len(ds)), replace=False))
        rows = [ds[int(i)] for i in pick]
        assert ds.prediction_times is not None
        times = [ds.prediction_times[int(i)] for i in pick]
        per_model: dict[str, Any] = {}
        shares: dict[str, pd.DataFrame] = {}
        for name, fm in models.items():
            t1 = time.time()
            shares[name], explained = explain_task(fm, task, rows, ig)
            rel = np.array([e.rel_error for e in explained])
            per_model[name] = {"auroc": _auroc([r["label"] for r in rows], [e.f_input for e in explained]),
                               "completeness": {"converged": int(sum(e.converged for e in explained)),
                                                "median_rel_error": float(np.median(rel)),
                                                "max_rel_error": float(rel.max())},
                               "seconds": round(time.time() - t1, 1)}
        result["tasks"][task] = {"rows": len(rows), "oracle_auroc": oracle_auroc(lay, task, rows, times),
                                 "models": per_model, "groups": compare(shares, args.bootstrap, args.seed)}
    if args.latency:
        result[latency_key(args.threads, args.device)] = latency(args.root, args.latency,
                                                                 before=args.threads == 1, device=args.device)
    result["machine"] = {"cpus": os.cpu_count(), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
                         "shared": True, "torch_threads": args.threads}
    result["seconds"] = round(time.time() - t0, 1)
    print_table(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.output}")
    return 0


def _ci(v: list[float]) -> str:
    return f"[{v[0]:.2f}, {v[1]:.2f}]"


def print_table(result: dict[str, Any]) -> None:
    """Per (task, group): token share; mass share, enrichment and top-5 rate of the trained model and of the
    random-weights null; their mass ratio. Then AUROCs, completeness and the serving latency."""
    print(f"{'task':<22}{'group':<18}{'tokens':>7}{'mass':>7}{'enrich [95% CI]':>20}{'top5':>6}"
          f"{'null mass':>10}{'null enrich [CI]':>20}{'top5':>6}{'trained/null [CI]':>22}")
    for task, t in result["tasks"].items():
        for group, g in t["groups"].items():
            tr, nu = g["trained"], g["random_weights"]
            top = [f"{x['top5_rate']:.2f}" if x["top5_rate"] is not None else "–" for x in (tr, nu)]
            print(f"{task:<22}{group:<18}{g['token_share']:>7.3f}{tr['mass_share']:>7.3f}"
                  f"{tr['enrichment']:>7.2f} {_ci(tr['enrichment_ci']):>12}{top[0]:>6}"
                  f"{nu['mass_share']:>10.3f}{nu['enrichment']:>7.2f} {_ci(nu['enrichment_ci']):>12}"
                  f"{top[1]:>6}"
                  f"{g['trained_over_null']:>9.2f} {_ci(g['trained_over_null_ci']):>12}")
    for task, t in result["tasks"].items():
        aucs = ", ".join(f"{m} {v['auroc']:.3f}" for m, v in t["models"].items() if v["auroc"] is not None)
        comp = ", ".join(f"{m} {v['completeness']['converged']}/{t['rows']} within 1% (max "
                         f"{v['completeness']['max_rel_error']:.1e})" for m, v in t["models"].items())
        oracle = "n/a" if t["oracle_auroc"] is None else f"{t['oracle_auroc']:.3f}"
        print(f"{task}: {t['rows']} rows; AUROC {aucs}, oracle {oracle}; completeness {comp}")
    for key in [k for k in result if k.startswith("latency")]:
        print_latency(result[key])


def print_latency(block: dict[str, Any]) -> None:
    """One line per timed bundle: median seconds without and with explanations, their ratio."""
    for b in block.get("bundles", []):
        was = (f"; before: {b['median_s']['on_before']:.3f} s ({b['ratio_before']:.2f}x), nodes "
               f"{b['steps_before']}" if "ratio_before" in b else "")
        print(f"serving {b['events']} events, both tasks, {block.get('torch_threads', 1)} thread(s): "
              f"{b['median_s']['off']:.3f} s without explanations, {b['median_s']['on']:.3f} s with "
              f"({b['ratio']:.2f}x), nodes {b['steps']}, converged {b.get('converged', '?')}{was}")


if __name__ == "__main__":
    sys.exit(main())
