"""Supervised baselines on the same splits and labels as the model, emitting predictions in the
``ehrfm.evaluate`` predictions contract (model names ``baseline_lr``, ``baseline_hgb``, ``baseline_cox``,
``baseline_rsf``, ``baseline_freq``) for every split, so the report treats them like the model.

- binary: logistic regression (log1p counts, scaled, L2; C picked by tuning-split AUROC) and
  HistGradientBoosting (early stopping on the tuning split);
- time-to-event: ridge-penalized CoxPH (small alpha, for stability with sparse counts) and a small
  RandomSurvivalForest (slow: keep trees few, min_samples_leaf >= 10) on the most frequent features;
- forecasting: the k target codes most frequent on train.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import cast

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score
from sklearn.preprocessing import StandardScaler
from sksurv.ensemble import RandomSurvivalForest
from sksurv.linear_model import CoxPHSurvivalAnalysis

from ehrfm.config.evaluate import BINARY_BASELINES, TTE_BASELINES, BaselineConfig
from ehrfm.evaluate.data import TaskKind
from ehrfm.evaluate.features import CountFeaturizer
from ehrfm.evaluate.forecast import frequency_baseline
from ehrfm.evaluate.survival import surv_array, survival_at
from ehrfm.schema import PREDICTION_TIME, SUBJECT_ID, TRAIN_SPLIT, TUNING_SPLIT

__all__ = ["BINARY_BASELINES", "TTE_BASELINES", "BaselineConfig", "run_baselines", "survival_grid"]


def _prepare(X: sp.csr_matrix, train: np.ndarray) -> sp.csr_matrix:
    """log1p of the count columns; NaN ages (no MEDS_BIRTH) imputed with the train median.

    The featurizer's last three columns are age_years, sex_F, sex_M (dense, kept on their own scale)."""
    X = sp.csr_matrix(X, dtype=np.float64)
    counts = X[:, :-3].tocsr()
    counts.data = np.log1p(counts.data)
    demo = X[:, -3:].toarray()
    age = demo[:, 0]
    med = float(np.nanmedian(age[train])) if np.isfinite(age[train]).any() else 0.0
    demo[:, 0] = np.where(np.isnan(age), med, age)
    return sp.hstack([counts, sp.csr_matrix(demo)], format="csr")


def _binary(name: str, X: sp.csr_matrix, y: np.ndarray, train: np.ndarray, tune: np.ndarray,
            cfg: BaselineConfig) -> np.ndarray:
    """Fit on train (tuned on tuning), return P(y=1) for every row.

    Train labels of one class (tiny real cohorts: e.g. no in-hospital death among the train subjects) cannot
    fit a classifier: the baseline then predicts the train rate for every row, with a warning."""
    if name not in BINARY_BASELINES:
        raise ValueError(f"unknown binary baseline {name!r} (use {', '.join(BINARY_BASELINES)})")
    if len(np.unique(y[train])) < 2:
        warnings.warn(f"baseline_{name}: the train labels hold one class ({y[train][0]:g}) on "
                      f"{int(train.sum())} rows; it predicts that rate for every row", stacklevel=2)
        return np.full(len(y), float(y[train].mean()))
    if name == "lr":
        Xs = StandardScaler(with_mean=False).fit(X[train]).transform(X)
        best: tuple[float, LogisticRegression] | None = None
        for c in cfg.lr_cs:
            m = LogisticRegression(C=c, max_iter=2000).fit(Xs[train], y[train])
            p = m.predict_proba(Xs[tune])[:, 1] if tune.any() else np.array([])
            two = tune.any() and 0 < y[tune].sum() < tune.sum()
            if two:
                score = roc_auc_score(y[tune], p)
            else:
                score = -log_loss(y[tune], p, labels=[0, 1]) if tune.any() else 0.0
            if best is None or score > best[0]:
                best = (float(score), m)
        assert best is not None
        return cast(np.ndarray, best[1].predict_proba(Xs)[:, 1])
    Xd = X.toarray()  # hgb
    hgb = HistGradientBoostingClassifier(max_iter=cfg.hgb_max_iter, early_stopping=True,
                                         random_state=cfg.seed)
    if tune.any() and len(np.unique(y[tune])) > 1:  # its validation score needs both classes there too
        hgb.fit(Xd[train], y[train], X_val=Xd[tune], y_val=y[tune])
    else:
        hgb.fit(Xd[train], y[train])
    return cast(np.ndarray, hgb.predict_proba(Xd)[:, 1])


def _tte(
    name: str, X: sp.csr_matrix, event: np.ndarray, dur: np.ndarray, train: np.ndarray, grid: np.ndarray,
    cfg: BaselineConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Fit on train; return (risk (n,), survival on grid (n, g))."""
    freq = np.asarray((X[train] != 0).sum(axis=0)).ravel()
    cols = np.sort(np.argsort(-freq, kind="stable")[: cfg.surv_max_features])
    Xd = StandardScaler().fit(X[train][:, cols].toarray()).transform(X[:, cols].toarray())
    y = surv_array(event[train], dur[train])
    if name == "cox":
        model: CoxPHSurvivalAnalysis | RandomSurvivalForest = CoxPHSurvivalAnalysis(alpha=cfg.cox_alpha,
                                                                                    ties="efron")
    elif name == "rsf":
        model = RandomSurvivalForest(
            n_estimators=cfg.rsf_trees, min_samples_leaf=cfg.rsf_min_leaf, max_features="sqrt",
            n_jobs=1, random_state=cfg.seed,
        )
    else:
        raise ValueError(f"unknown time-to-event baseline {name!r} (use {', '.join(TTE_BASELINES)})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny/sparse data
        model.fit(Xd[train], y)
        fns = model.predict_survival_function(Xd, return_array=True)
    return model.predict(Xd), survival_at(np.asarray(fns), np.asarray(model.unique_times_), grid)


def survival_grid(dur_train: np.ndarray, points: int) -> np.ndarray:
    """Evaluation grid for predicted survival: quantiles 2%..98% of train durations (unique, > 0)."""
    g = np.unique(np.quantile(dur_train, np.linspace(0.02, 0.98, points)))
    return g[g > 0] if (g > 0).any() else np.array([1.0])


def run_baselines(
    events: pd.DataFrame,
    labels: pd.DataFrame,
    task: str,
    kind: TaskKind,
    which: Sequence[str],
    cfg: BaselineConfig | None = None,
) -> pd.DataFrame:
    """Predictions (contract of ``ehrfm.evaluate``) of the requested baselines for one task.

    labels: the task's labels with a ``split`` column; which: subset of lr, hgb, cox, rsf (baselines of
    another task kind are skipped; forecast tasks always get the frequency baseline).
    """
    cfg = cfg or BaselineConfig()
    labels = labels.reset_index(drop=True)
    train = (labels["split"] == TRAIN_SPLIT).to_numpy()
    tune = (labels["split"] == TUNING_SPLIT).to_numpy()
    if not train.any():
        raise ValueError(f"task {task!r}: no labels on the train split; baselines need some")
    base = labels[[SUBJECT_ID, PREDICTION_TIME, "split"]].assign(task=task)
    frames: list[pd.DataFrame] = []
    if kind == "forecast":
        top = frequency_baseline(labels.loc[train, "target_codes"], cfg.forecast_k)
        codes = pd.Series([top] * len(base), index=base.index, dtype=object)
        return base.assign(model="baseline_freq", topk_codes=codes)
    names = [w for w in which if w in (BINARY_BASELINES if kind == "binary" else TTE_BASELINES)]
    if not names:
        return base.iloc[:0].assign(model=pd.Series(dtype=str))
    feat = CountFeaturizer(cfg.windows_days, cfg.min_count, cfg.max_codes)
    X = _prepare(feat.fit_transform(events, labels, train), train)
    for name in names:
        if kind == "binary":
            y = labels["boolean_value"].astype(float).to_numpy()
            frames.append(base.assign(model=f"baseline_{name}", prob=_binary(name, X, y, train, tune, cfg)))
        else:
            ev = labels["event"].astype(int).to_numpy()
            dur = labels["duration_days"].astype(float).to_numpy()
            grid = survival_grid(dur[train], cfg.grid_points)
            risk, surv = _tte(name, X, ev, dur, train, grid, cfg)
            frames.append(
                base.assign(
                    model=f"baseline_{name}",
                    risk=risk,
                    survival=pd.Series(list(surv), index=base.index, dtype=object),
                    times_days=pd.Series([list(grid)] * len(base), index=base.index, dtype=object),
                )
            )
    return pd.concat(frames, ignore_index=True)
