"""Transfer study (issue 18 item 4): a model pretrained and finetuned at synthetic site A, carried to site B
(``ehrfm synth --site B``: same planted risk model, shifted population, local lab / encounter codes).

Pipeline (each stage skipped when its output exists under ``--root``)::

    <root>/A: synth (site A, seed 0) -> ingest fhir -> label (--engine local|spark) -> prepare -> tokenize
              -> pretrain
              -> finetune (full, every task)                         = the A model  (bench/finetune_oracle.py)
    <root>/B: synth --site B (seed 1) -> ingest fhir -> label -> tokenize WITH A's vocabulary and bins
              (A's prepare outputs copied: the A model reads B's rows; B's local codes are out of vocabulary)
    zero-shot : the A model predicts B's held-out rows (ehrfm.train.predict)
    adapt at B, K = 16, 64, 256, 1024 and all labelled train rows per task (the same stratified draw,
              ehrfm.train.finetune_run.few_shot_rows, for every method):
      lora    ehrfm finetune --pretrained <A model> --adapt.mode lora --adapt.few_shot K
      full    ehrfm finetune --pretrained <A model> --adapt.few_shot K       (backbone and new heads trained)
      head    head only: the A backbone frozen, a logistic head fitted on its pooled embeddings of the K rows
      scratch ehrfm finetune from a randomly initialised model of the same architecture, on B's rows
              tokenized with B's OWN vocabulary (ehrfm prepare at B: B's local codes and their values)
      lr, hgb count-feature baselines (ehrfm.evaluate.baselines) fitted on the same K rows
    metrics on B's held-out rows: AUROC and AUROC / oracle AUROC (the planted true_prob on the same rows) with
              95% subject-bootstrap CIs (ehrfm.evaluate.bootstrap); label-efficiency plot; a domain classifier
              (A vs B) on pooled embeddings before (A model) and after adaptation (full, all rows); B's
              embedding-space outliers (ehrfm.notebook.embed.outlier_scores, notebook 03)

Writes ``bench/results/transfer.json`` and ``bench/results/transfer_label_efficiency.png``.

    .venv/bin/python bench/transfer.py --root /tmp/transfer --patients 10000 --steps full
    .venv/bin/python bench/transfer.py --root /tmp/transfer_smoke --patients 300 --steps small   # smoke

Measured cost of the smoke run (300 patients per site, ``--steps small``, every K and method, local
engines, 2 shared vCPUs at load ~9): 519 s in all — site A's data stages + pretraining + finetuning 90 s,
site B's data stages 18 s, zero-shot 6 s, then ~15-30 s per ``ehrfm finetune`` at B (15 of them) and a few
seconds per head-only / count-baseline fit; stages are cached under --root (a rerun redoes only what is
missing). Its numbers are noise (a few dozen held-out rows): it checks the plumbing.

Expected at 10k patients per site with ``--steps full`` on a CPU: ~10 min of data stages per site,
pretraining ~30-60 min, and 15 finetuning runs at B of ~5-10 min each, i.e. roughly 3-4 hours in all (much
less on a GPU). Measured 2026-12-05 (``bench/results/transfer.json``, README "Transfer to a second
site"): with
site A reused from the 30k calibrated finetune_oracle root (``<root>/A`` a link to it) and 10k patients at B,
B's data stages + zero-shot + the 15 finetuning runs + head-only / baselines / domain classifier took ~110 min
on 2 vCPUs shared with other jobs (load 3-16); the JSON records every stage's seconds and the load average.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_oracle import _ehrfm, _overrides, prepare_data, run_variant  # noqa: E402

from ehrfm.layout import Layout  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TASKS = ["readmission_30d", "mortality_inhospital"]  # the binary tasks with a planted truth (oracle)
KS = "16,64,256,1024,all"
METHODS = ("lora", "full", "head", "scratch", "lr", "hgb")
# (pretraining overrides, finetuning overrides) per --steps
STEPS: dict[str, tuple[list[str], list[str]]] = {
    "small": (["trainer.max_steps=20", "trainer.val_check_interval=10"],
              ["trainer.max_steps=20", "trainer.val_check_interval=10",
               "trainer.checkpoint_every_n_steps=10"]),
    "medium": (["trainer.max_steps=300"], ["trainer.max_steps=150"]),
    "full": (["trainer.max_steps=3000", "trainer.val_check_interval=250"],
             ["trainer.max_steps=600", "trainer.val_check_interval=50"]),
}
PLOT = "transfer_label_efficiency.png"


def _k_value(k: str) -> int:
    """``all`` -> 0 (few_shot's "every row"), else the integer."""
    return 0 if k == "all" else int(k)


def data_stages(root: Path, n: int, site: str, engine: str, master: str) -> None:
    """synth -> ingest fhir -> label for one site (skipped when present). Site A uses seed 0 (as
    bench/finetune_oracle.py, whose prepare_data then finds these outputs), site B seed 1. ``engine``:
    local (no JVM) or spark for ingest and label."""
    lay, r = Layout(root=str(root)), ["--root", str(root)]
    run_on = ["--engine", "local"] if engine == "local" else ["--spark.master", master]
    if not lay.truth.exists():
        _ehrfm("synth", *r, "--n_patients", str(n), "--seed", "0" if site == "A" else "1", "--site", site,
               "--progress", "false")
    if not lay.meds_paths.subject_splits.exists():
        _ehrfm("ingest", "fhir", *r, *run_on, "--validate", "none")
    if not lay.label_table(TASKS[0]).exists():
        _ehrfm("label", *r, *run_on)


def prepare_site_b(root_a: Path, root_b: Path, n: int, engine: str, master: str) -> None:
    """Site B's data stages; its rows are tokenized with site A's vocabulary and bins (A's prepare)."""
    lay_a, lay_b, r = Layout(root=str(root_a)), Layout(root=str(root_b)), ["--root", str(root_b)]
    data_stages(root_b, n, "B", engine, master)
    tok_a, tok_b = lay_a.token_paths, lay_b.token_paths
    if not tok_b.tasks.exists():
        tok_b.root.mkdir(parents=True, exist_ok=True)
        for src in (tok_a.vocab, tok_a.bins, tok_a.prepare_json):
            shutil.copyfile(src, tok_b.root / src.name)
        max_len = json.loads(tok_a.meta.read_text())["config"]["max_len"]
        _ehrfm("tokenize", *r, "--tokenizer.max_len", str(max_len), "--engine", "local",
               "--pretrain_rows", "false")


def own_tokens(root_a: Path, root_b: Path) -> Path:
    """B's rows tokenized with B's OWN vocabulary and bins (``ehrfm prepare`` at B) into
    ``<root_b>/tokens_own``: the from-scratch arm learns B's local codes and their values, which A's
    vocabulary maps to [UNK] without value tokens."""
    own = root_b / "tokens_own"
    if not (own / "tasks").exists():
        max_len = json.loads(Layout(root=str(root_a)).token_paths.meta.read_text())["config"]["max_len"]
        r = ["--root", str(root_b), "--tokens", str(own)]
        _ehrfm("prepare", *r, "--engine", "local")
        _ehrfm("tokenize", *r, "--tokenizer.max_len", str(max_len), "--engine", "local",
               "--pretrain_rows", "false")
    return own


def scratch_model(a_model: Path, vocab: Path, out: Path, seed: int = 0) -> Path:
    """A randomly initialised model with the A model's architecture over the vocabulary ``vocab`` (B's own):
    the from-scratch arm."""
    import dataclasses

    import torch

    from ehrfm.models import EHRFoundationModel
    from ehrfm.vocab import Vocabulary

    if not (out / "model.pt").exists():
        torch.manual_seed(seed)
        cfg = EHRFoundationModel.from_pretrained(a_model).config
        cfg = dataclasses.replace(cfg, vocab_size=len(Vocabulary.load(vocab).tokens))
        EHRFoundationModel(cfg).save_pretrained(out)
        shutil.copyfile(vocab, out / "vocab.json")
    return out


def finetune_at_b(root_b: Path, name: str, src: Path, k: int, tasks: list[str], sets: list[str],
                  tokens: Path | None = None) -> Path:
    """``ehrfm finetune`` at B from ``src`` on K rows per task (0: all) into ``<root_b>/runs_<name>``
    (``tokens``: another tokens folder of B than the default, A's vocabulary)."""
    runs = root_b / f"runs_{name}"
    run = Layout(root=str(root_b), runs=str(runs)).finetune_run
    if not run.predictions.exists():
        lora = ["--adapt.mode", "lora", "--optim.lr", "3e-3"] if name.startswith("lora") else []
        other = ["--tokens", str(tokens)] if tokens is not None else []
        _ehrfm("finetune", "--root", str(root_b), *other, "--runs", str(runs), "--pretrained", str(src),
               "--tasks", f"[{','.join(tasks)}]", "--model_name", name, "--trainer.progress_bar", "false",
               "--tracking.enabled", "false", "--adapt.few_shot", str(k), *lora, *_overrides(sets))
    return run.predictions


_POOLED: dict[tuple[int, str, str, str], pd.DataFrame] = {}


def pooled_rows(fm: Any, tokens_dir: Path, task: str, split: str) -> pd.DataFrame:
    """Pooled last hidden state of every ``task`` row of ``split`` (the heads' input), with its keys and
    label: columns subject_id, prediction_time, label, emb. Cached per (model, tokens, task, split): the
    head-only arm reuses the same embeddings for every K."""
    key = (id(fm), str(tokens_dir), task, split)
    if key not in _POOLED:
        _POOLED[key] = _pooled_rows(fm, tokens_dir, task, split)
    return _POOLED[key]


def _pooled_rows(fm: Any, tokens_dir: Path, task: str, split: str) -> pd.DataFrame:
    import torch

    from ehrfm.data.dataset import LIST_COLUMNS
    from ehrfm.models import pool
    from ehrfm.train.predict import task_batches

    recs: list[dict[str, Any]] = []
    with torch.no_grad():
        for ds, idx, batch in task_batches(fm, tokens_dir, task, split, max_tokens=16384):
            h = fm.model(**{c: batch[c] for c in LIST_COLUMNS}, return_logits=False).hidden
            emb = pool(h, batch["lengths"]).float().numpy()
            assert ds.prediction_times is not None
            for j, i in enumerate(idx):
                recs.append({"subject_id": int(ds.subject_ids[i]), "prediction_time": ds.prediction_times[i],
                             "label": float(ds[i]["label"]), "emb": emb[j]})
    out = pd.DataFrame(recs, columns=["subject_id", "prediction_time", "label", "emb"])
    out["prediction_time"] = pd.to_datetime(out["prediction_time"])
    return out


def few_shot_keys(tokens_dir: Path, tasks: list[str], k: int) -> dict[str, pd.DataFrame]:
    """Per task the (subject_id, prediction_time) of the K train rows ``ehrfm finetune --adapt.few_shot K``
    draws (same function, same seed: few_shot_seed 0 + the task's index), so every method sees one set."""
    from ehrfm.data import TokenStreamDataset
    from ehrfm.layout import TokenPaths
    from ehrfm.train.finetune_run import few_shot_rows

    out = {}
    for i, task in enumerate(tasks):
        ds = TokenStreamDataset(TokenPaths(tokens_dir).task(task), split="train", task=task)
        rows = few_shot_rows(ds, "binary", k, i) if k else np.arange(len(ds))
        assert ds.prediction_times is not None
        out[task] = pd.DataFrame({"subject_id": [int(ds.subject_ids[r]) for r in rows],
                                  "prediction_time": pd.to_datetime([ds.prediction_times[r] for r in rows])})
    return out


def head_only(fm: Any, tokens_b: Path, task: str, keys: pd.DataFrame) -> pd.DataFrame:
    """Head-only adaptation: the A backbone frozen, a logistic head on its pooled embeddings of the K rows
    (the heads see exactly this pooled vector); predictions for B's held-out rows."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train = pooled_rows(fm, tokens_b, task, "train").merge(keys, on=["subject_id", "prediction_time"])
    test = pooled_rows(fm, tokens_b, task, "held_out")
    x_tr = np.stack(train["emb"].to_list())
    if len(np.unique(train["label"])) < 2:  # one class among the K rows: the rate is all there is
        prob = np.full(len(test), float(train["label"].mean()))
    else:
        scaler = StandardScaler().fit(x_tr)
        lr = LogisticRegression(C=0.1, max_iter=2000).fit(scaler.transform(x_tr), train["label"])
        prob = lr.predict_proba(scaler.transform(np.stack(test["emb"].to_list())))[:, 1]
    return test[["subject_id", "prediction_time"]].assign(prob=prob)


def count_baselines(lay_b: Layout, task: str, keys: pd.DataFrame,
                    names: list[str]) -> dict[str, pd.DataFrame]:
    """Count-feature LR / HGB (ehrfm.evaluate.baselines) fitted on the K rows only (tuned on B's tuning
    split); predictions for B's held-out rows."""
    from ehrfm.evaluate import BaselineConfig, CountFeaturizer
    from ehrfm.evaluate.baselines import _binary, _prepare
    from ehrfm.evaluate.data import attach_split, load_events, load_labels, load_splits

    labels = attach_split(load_labels(lay_b.labels_dir, [task])[task], load_splits(lay_b.meds_paths.root),
                          task).reset_index(drop=True)
    key = labels[["subject_id", "prediction_time"]].merge(keys.assign(_k=True), how="left",
                                                          on=["subject_id", "prediction_time"])
    train = key["_k"].fillna(False).to_numpy(dtype=bool) & (labels["split"] == "train").to_numpy()
    tune = (labels["split"] == "tuning").to_numpy()
    events = load_events(lay_b.meds_paths.root)
    X = _prepare(CountFeaturizer().fit_transform(events, labels, train), train)
    y = labels["boolean_value"].astype(float).to_numpy()
    test = (labels["split"] == "held_out").to_numpy()
    out = {}
    for name in names:
        p = _binary(name, X, y, train, tune, BaselineConfig())
        out[name] = labels.loc[test, ["subject_id", "prediction_time"]].assign(prob=p[test])
    return out


def score(pred: pd.DataFrame, labels: pd.DataFrame, truth: pd.DataFrame, n_boot: int) -> dict[str, Any]:
    """AUROC, the oracle's AUROC on the same rows and their ratio, with 95% subject-bootstrap CIs."""
    from ehrfm.evaluate.binary import auroc
    from ehrfm.evaluate.bootstrap import bootstrap_metrics

    keys = ["subject_id", "prediction_time"]
    m = pred[[*keys, "prob"]].merge(labels[[*keys, "boolean_value"]], on=keys).merge(
        truth[[*keys, "true_prob"]], on=keys)
    y, p, tp = (m["boolean_value"].astype(float).to_numpy(), m["prob"].to_numpy(float),
                m["true_prob"].to_numpy(float))
    values = bootstrap_metrics({"auroc": lambda i: auroc(y[i], p[i]), "oracle": lambda i: auroc(y[i], tp[i]),
                                "ratio": lambda i: auroc(y[i], p[i]) / auroc(y[i], tp[i])},
                               m["subject_id"].to_numpy(), n_boot=n_boot)
    out: dict[str, Any] = {"n": len(m), "positives": int(y.sum())}
    for name, v in values.items():
        out[name] = v.to_dict()
    return out


def domain_auroc(emb_a: np.ndarray, emb_b: np.ndarray, seed: int = 0) -> float:
    """5-fold cross-validated AUROC of a logistic classifier telling A's rows from B's (0.5: same
    distribution) on equal-size samples."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    n = min(len(emb_a), len(emb_b), 2000)
    x = np.concatenate([emb_a[rng.choice(len(emb_a), n, replace=False)],
                        emb_b[rng.choice(len(emb_b), n, replace=False)]])
    y = np.repeat([0, 1], n)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    p = cross_val_predict(clf, x, y, cv=min(5, n), method="predict_proba")[:, 1]
    return float(roc_auc_score(y, p))


def outliers(emb_a: np.ndarray, emb_b: pd.DataFrame, top: int = 10) -> dict[str, Any]:
    """B's embedding-space outliers (notebook 03's outlier_scores): B's most isolated rows, and the share of
    B rows among the top 5% outliers of A and B pooled."""
    from ehrfm.notebook.embed import outlier_scores

    xb = np.stack(emb_b["emb"].to_list())
    s_b = outlier_scores(xb)
    order = np.argsort(-s_b)[:top]
    pooled = outlier_scores(np.concatenate([emb_a, xb]))
    cut = np.quantile(pooled, 0.95)
    is_b = np.r_[np.zeros(len(emb_a)), np.ones(len(xb))].astype(bool)
    top_b = [{"subject_id": int(emb_b["subject_id"].iloc[i]), "score": float(s_b[i])} for i in order]
    return {"top_b": top_b, "b_share_of_rows": float(is_b.mean()),
            "b_share_of_top5pct_outliers": float(is_b[pooled >= cut].mean())}


def plot(rows: list[dict[str, Any]], tasks: list[str], path: Path) -> None:
    """AUROC / oracle against K (log axis; "all" drawn at the train size) per task, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for method in METHODS:
            pts = sorted((r["train_rows"], r["ratio"]["value"]) for r in rows
                         if r["task"] == task and r["method"] == method and r["ratio"]["value"] is not None)
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=method)
        zs = [r for r in rows if r["task"] == task and r["method"] == "zero_shot"]
        if zs and zs[0]["ratio"]["value"] is not None:
            ax.axhline(zs[0]["ratio"]["value"], color="k", ls="--", lw=1, label="zero-shot (A model)")
        ax.set_xscale("log")
        ticks: list[int] = []
        for t in sorted({r["train_rows"] for r in rows if r["task"] == task and r["train_rows"]}):
            if not ticks or t > 1.4 * ticks[-1]:  # labels closer than that overprint each other
                ticks.append(t)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set(title=task, xlabel="labelled rows at B (K)", ylabel="AUROC / oracle AUROC")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the study, print the table, write the JSON and the plot."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, required=True, help="working folder (reused between runs)")
    ap.add_argument("--patients", type=int, default=10000, help="patients per site")
    ap.add_argument("--steps", choices=sorted(STEPS), default="medium")
    ap.add_argument("--ks", default=KS, help="labelled rows per task at B (comma-separated; 'all')")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--engine", choices=["local", "spark"], default="local",
                    help="engine of ingest fhir and label (local: no JVM)")
    ap.add_argument("--master", default="local[2]", help="Spark master with --engine spark")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--bootstrap", type=int, default=200)
    ap.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "transfer.json")
    args = ap.parse_args(argv)
    import torch

    from ehrfm.evaluate.data import attach_split, load_labels, load_splits
    from ehrfm.synth import read_truth
    from ehrfm.train.predict import FinetunedModel, predict

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    load0, t0 = os.getloadavg(), time.time()
    tasks = [t for t in args.tasks.split(",") if t]
    ks = [k for k in args.ks.split(",") if k]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown} (known: {', '.join(METHODS)})")
    pre_sets, ft_sets = STEPS[args.steps]
    root_a, root_b = args.root / "A", args.root / "B"
    timings: dict[str, float] = {}

    data_stages(root_a, args.patients, "A", args.engine, args.master)
    prepare_data(root_a, args.patients, args.master, pre_sets, args.max_len)
    a_model = run_variant(root_a, "full", tasks, ft_sets) / "model"
    timings["site_a_s"] = round(time.time() - t0, 1)
    t1 = time.time()
    prepare_site_b(root_a, root_b, args.patients, args.engine, args.master)
    timings["site_b_data_s"] = round(time.time() - t1, 1)
    lay_b = Layout(root=str(root_b))
    tokens_b = lay_b.token_paths.root
    splits = load_splits(lay_b.meds_paths.root)
    labels = {t: attach_split(df, splits, t) for t, df in load_labels(lay_b.labels_dir, tasks).items()}
    labels = {t: df[df["split"] == "held_out"] for t, df in labels.items()}
    truth = read_truth(lay_b.truth)
    truth["prediction_time"] = pd.to_datetime(truth["prediction_time"])

    rows: list[dict[str, Any]] = []

    def add(task: str, method: str, k: str, n_train: int, pred: pd.DataFrame) -> None:
        tr = truth[truth["task"] == task]
        res = score(pred[pred["task"] == task] if "task" in pred else pred, labels[task], tr, args.bootstrap)
        rows.append({"task": task, "method": method, "k": k, "train_rows": n_train, **res})

    fm_a = FinetunedModel.load(a_model)
    t1 = time.time()
    zero = predict(fm_a, tokens_b, tasks, splits=("held_out",), progress=False)
    for task in tasks:
        add(task, "zero_shot", "0", 0, zero)
    timings["zero_shot_s"] = round(time.time() - t1, 1)
    scratch, tokens_own = None, None
    if "scratch" in methods:
        tokens_own = own_tokens(root_a, root_b)
        scratch = scratch_model(a_model, tokens_own / "vocab.json", args.root / "scratch_model")
    for k in ks:
        keys = few_shot_keys(tokens_b, tasks, _k_value(k))
        sizes = {t: len(v) for t, v in keys.items()}
        for method in methods:
            t1 = time.time()
            if method in ("lora", "full", "scratch"):
                src, tok = (scratch, tokens_own) if method == "scratch" else (a_model, None)
                assert src is not None
                path = finetune_at_b(root_b, f"{method}_k{k}", src, _k_value(k), tasks, ft_sets, tok)
                pred = pd.read_parquet(path)
                pred = pred[pred["split"] == "held_out"]
                for task in tasks:
                    add(task, method, k, sizes[task], pred)
            elif method == "head":
                for task in tasks:
                    add(task, method, k, sizes[task], head_only(fm_a, tokens_b, task, keys[task]))
            elif method == "lr":  # lr and hgb share one featurization
                names = [m for m in ("lr", "hgb") if m in methods]
                for task in tasks:
                    for name, p in count_baselines(lay_b, task, keys[task], names).items():
                        add(task, name, k, sizes[task], p)
            elif method == "hgb" and "lr" not in methods:
                for task in tasks:
                    add(task, "hgb", k, sizes[task], count_baselines(lay_b, task, keys[task], ["hgb"])["hgb"])
            timings[f"{method}_k{k}_s"] = round(time.time() - t1, 1)

    # domain shift in the representation: A vs B held-out rows, before (A model) and after (B full, all rows)
    t1 = time.time()
    tokens_a = Layout(root=str(root_a)).token_paths.root
    task0 = tasks[0]
    emb_a = np.stack(pooled_rows(fm_a, tokens_a, task0, "held_out")["emb"].to_list())
    emb_b = pooled_rows(fm_a, tokens_b, task0, "held_out")
    domain: dict[str, Any] = {"task_rows": task0,
                              "before_auroc": domain_auroc(emb_a, np.stack(emb_b["emb"].to_list()))}
    after_dir = root_b / f"runs_full_k{ks[-1]}" / "finetune" / "model"
    if (after_dir / "heads.json").exists():
        fm_after = FinetunedModel.load(after_dir)
        domain["after_model"] = f"full_k{ks[-1]}"
        domain["after_auroc"] = domain_auroc(
            np.stack(pooled_rows(fm_after, tokens_a, task0, "held_out")["emb"].to_list()),
            np.stack(pooled_rows(fm_after, tokens_b, task0, "held_out")["emb"].to_list()))
    out_b = outliers(emb_a, emb_b)
    timings["domain_and_outliers_s"] = round(time.time() - t1, 1)

    print(f"\n{'task':<24}{'method':<11}{'K':>6}{'rows':>7}{'AUROC':>8}{'/oracle':>9}  95% CI of the ratio")
    for r in rows:
        ratio = r["ratio"]
        ci = "" if ratio.get("ci_low") is None else f"  [{ratio['ci_low']:.3f}, {ratio['ci_high']:.3f}]"
        print(f"{r['task']:<24}{r['method']:<11}{r['k']:>6}{r['train_rows']:>7}{_fmt(r['auroc']['value']):>8}"
              f"{_fmt(ratio['value']):>9}{ci}")
    print(f"domain classifier AUROC (A vs B, pooled embeddings): {domain}")
    print(f"B outliers: {out_b['b_share_of_top5pct_outliers']:.2f} of the top 5% (B holds "
          f"{out_b['b_share_of_rows']:.2f} of the rows)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    png = args.output.parent / PLOT
    plot(rows, tasks, png)
    shown = str(png.relative_to(REPO)) if png.is_relative_to(REPO) else str(png)
    result = {"patients_per_site": args.patients, "steps": args.steps, "step_overrides": STEPS[args.steps],
              "tasks": tasks, "ks": ks, "methods": methods, "rows": rows, "domain_classifier": domain,
              "outliers_b": out_b, "plot": shown,
              "timings": {**timings, "total_s": round(time.time() - t0, 1)},
              "machine": {"cpus": os.cpu_count(), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
                          "shared": True},
              "note": "stages found cached under --root are not re-timed"}
    args.output.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.output} and {png}")
    return 0


def _fmt(v: float | None) -> str:
    return "NaN" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
