"""Post-hoc calibration of a finetuned model's risks, fitted on the tuning split and saved with the model.

The model folder holds ``calibration.json`` (plain JSON, never a pickle); :class:`FinetunedModel` loads it
and :func:`ehrfm.train.predict.predict_batch` applies it, so batch predictions, the pyfunc model, the server
and Spark scoring all return calibrated outputs. This module is numpy only (no torch, no sklearn at
inference): serving imports it.

- **binary**: a monotone map of the head's probability. ``platt``: ``sigmoid(a * logit(p) + b)`` (``a > 0``
  is enforced, so it is strictly increasing); ``isotonic``: sklearn's ``IsotonicRegression`` (increasing,
  out-of-bounds clipped), stored as its thresholds and applied by linear interpolation, as sklearn does.
  Isotonic steps tie rows that the raw score ranked apart, which lowers AUROC; we break the ties with the
  raw score (``(1 - 1e-4) * iso(p) + 1e-4 * p``), so the map is strictly increasing and AUROC is exactly
  unchanged at a calibration cost of at most 1e-4. ``auto`` chooses none / Platt / isotonic by
  cross-validated log loss on the tuning split (subject-grouped folds): the in-sample log loss would always
  pick isotonic, which overfits small tuning sets; isotonic is a candidate only with at least
  ``min_positives`` positives and negatives.
- **tte**: the event probability ``F(e_k) = 1 - S(e_k)`` at each bin edge gets its own Platt map (or none),
  fitted with inverse-probability-of-censoring weights (rows censored before ``e_k`` have an unknown status
  there: weight 0; the others are weighted by 1 / G, G the Kaplan–Meier of censoring on the tuning rows) and
  chosen per edge by cross-validated weighted log loss. Isotonic is not offered: with IPCW weights and few
  events per late edge it overfits. Survival stays non-increasing by a running maximum of the calibrated F
  over the edges; each edge's map is monotone, and the running max can only reorder two rows where one
  row's calibrated curve crosses another's (rare: the maps are smooth and close to each other).
- **forecast**: temperature scaling of the first-step LM logits over the diagnosis codes
  (``softmax(z / T)``), T fitted by the finetuning loss (mean over a row's target codes of ``-log p``).
  The ranking of codes, hence ``topk_codes``, is unchanged. With ``rollout_steps > 0`` the scores come from a
  rollout, not from one softmax, and no temperature is fitted (T = 1).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1
EPS = 1e-6
TIE_BREAK = 1e-4
"""Weight of the raw score mixed into isotonic outputs (keeps the map strictly increasing)."""
MIN_WEIGHT_G = 0.05
"""Floor of the censoring survival G in IPCW weights (bounds a late row's weight at 20)."""


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.asarray(np.log(q) - np.log1p(-q))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -500.0, 500.0))))


def log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray | None = None) -> float:
    """(Weighted) mean binary log loss of probabilities ``p`` for 0/1 labels ``y``."""
    q = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    ll = -(y * np.log(q) + (1 - y) * np.log1p(-q))
    return float(np.average(ll, weights=w))


@dataclass
class ProbMap:
    """A monotone increasing map of probabilities: ``none``, ``platt`` (a, b) or ``isotonic`` (x, y)."""

    method: str = "none"
    a: float = 1.0
    b: float = 0.0
    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """Calibrated probabilities, same shape as ``p``."""
        p = np.asarray(p, dtype=float)
        if self.method == "platt":
            return _sigmoid(self.a * _logit(p) + self.b)
        if self.method == "isotonic":
            iso = np.interp(p, self.x, self.y)  # clipped outside [x0, xn], as out_of_bounds="clip"
            return np.asarray((1 - TIE_BREAK) * iso + TIE_BREAK * p)
        return p


def fit_platt(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> ProbMap:
    """Platt scaling on the logit of ``p``: weighted logistic regression of ``y`` on ``logit(p)`` (a weak
    ridge for separable data); the slope is kept positive so the map stays increasing."""
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(C=1e4, max_iter=1000)
    lr.fit(_logit(p)[:, None], np.asarray(y, dtype=int), sample_weight=w)
    return ProbMap("platt", a=float(max(lr.coef_[0, 0], 1e-3)), b=float(lr.intercept_[0]))


def fit_isotonic(p: np.ndarray, y: np.ndarray, w: np.ndarray | None = None) -> ProbMap:
    """Isotonic regression of ``y`` on ``p`` (increasing, clipped to [0, 1] and out of bounds)."""
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(np.asarray(p, dtype=float), np.asarray(y, dtype=float), sample_weight=w)
    return ProbMap("isotonic", x=[float(v) for v in iso.X_thresholds_],
                   y=[float(v) for v in iso.y_thresholds_])


FITTERS: dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray | None], ProbMap]] = {
    "none": lambda p, y, w: ProbMap(), "platt": fit_platt, "isotonic": fit_isotonic}


def _folds(groups: np.ndarray, n_folds: int, seed: int) -> list[np.ndarray]:
    """Held-out row indices of ``n_folds`` folds with whole subjects per fold (seeded)."""
    subjects = np.unique(groups)
    rng = np.random.default_rng(seed)
    fold_of = dict(zip(rng.permutation(subjects).tolist(), np.arange(len(subjects)) % n_folds, strict=True))
    ids = np.asarray([fold_of[g] for g in groups.tolist()])
    return [np.flatnonzero(ids == f) for f in range(n_folds) if (ids == f).any()]


def cv_log_loss(method: str, p: np.ndarray, y: np.ndarray, groups: np.ndarray, w: np.ndarray | None,
                n_folds: int, seed: int) -> float:
    """Log loss of ``method`` fitted on the other folds, pooled over the held-out folds (NaN when a
    training part has one class)."""
    wt = np.ones(len(p)) if w is None else np.asarray(w, dtype=float)
    out = np.empty(len(p))
    for held in _folds(groups, n_folds, seed):
        train = np.setdiff1d(np.arange(len(p)), held)
        known = train[wt[train] > 0]
        if len(np.unique(y[known])) < 2:
            return float("nan")
        out[held] = FITTERS[method](p[train], y[train], wt[train])(p[held])
    return log_loss(y, out, wt)


def choose_map(p: np.ndarray, y: np.ndarray, groups: np.ndarray, method: str, w: np.ndarray | None = None,
               min_positives: int = 50, n_folds: int = 5, seed: int = 0,
               candidates: Sequence[str] = ("none", "platt", "isotonic")) -> tuple[ProbMap, dict[str, Any]]:
    """The map for one score: ``method`` itself, or with ``auto`` the candidate of lowest cross-validated
    (weighted) log loss. Returns the map fitted on every row and what the choice saw (n, positives, the
    in-sample raw log loss and each candidate's cross-validated log loss)."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    wt = np.ones(len(p)) if w is None else np.asarray(w, dtype=float)
    known = wt > 0
    pos, neg = int(y[known].sum()), int((1 - y[known]).sum())
    info: dict[str, Any] = {"n": int(known.sum()), "positives": pos,
                            "log_loss_raw": log_loss(y[known], p[known], wt[known]) if known.any() else None}
    if pos == 0 or neg == 0:
        return ProbMap(), {**info, "method": "none", "note": "one class on the tuning split"}
    if method != "auto":
        return FITTERS[method](p, y, wt), {**info, "method": method}
    allowed = [c for c in candidates if c != "isotonic" or min(pos, neg) >= min_positives]
    n_folds = min(n_folds, len(np.unique(groups)))
    scores = {c: cv_log_loss(c, p, y, groups, wt, n_folds, seed) for c in allowed} if n_folds >= 2 else {}
    finite = {c: s for c, s in scores.items() if np.isfinite(s)}
    best = min(finite, key=lambda c: finite[c]) if finite else "none"
    return FITTERS[best](p, y, wt), {**info, "method": best, "cv_log_loss": finite}


def censoring_weights(event: np.ndarray, duration: np.ndarray,
                      horizon: float) -> tuple[np.ndarray, np.ndarray]:
    """(0/1 event-by-``horizon`` labels, IPCW weights) for a horizon: an event by then weighs 1 / G(d-),
    a row followed past it 1 / G(horizon), a row censored before it 0 (G: Kaplan–Meier of censoring,
    floored at ``MIN_WEIGHT_G``)."""
    event = np.asarray(event, dtype=float) > 0
    dur = np.asarray(duration, dtype=float)
    times = np.unique(dur[~event])
    at_risk = np.asarray([(dur >= t).sum() for t in times], dtype=float)
    censored = np.asarray([((dur == t) & ~event).sum() for t in times], dtype=float)
    g = np.cumprod(1.0 - censored / np.maximum(at_risk, 1.0))

    def g_at(t: np.ndarray, before: bool) -> np.ndarray:
        i = np.searchsorted(times, t, side="left" if before else "right") - 1
        return np.maximum(np.where(i >= 0, g[np.clip(i, 0, None)] if len(g) else 1.0, 1.0), MIN_WEIGHT_G)

    y = (event & (dur <= horizon)).astype(float)
    w = np.where(y > 0, 1.0 / g_at(dur, True), np.where(dur > horizon, 1.0 / g_at(np.full_like(dur, horizon),
                                                                                  False), 0.0))
    return y, w


@dataclass
class TaskCalibration:
    """One task's calibration: binary -> one map; tte -> one map per bin edge after 0; forecast -> T."""

    task: str
    kind: str
    maps: list[ProbMap] = field(default_factory=list)
    temperature: float = 1.0
    fit: dict[str, Any] = field(default_factory=dict)
    """What the fit saw (rows, positives, log losses, the method chosen); informative only."""

    @property
    def method(self) -> str:
        """The method(s) in use: ``platt``, ``isotonic``, ``none``, ``temperature``; a tte task whose edges
        differ lists one per edge (``platt,platt,none,none``)."""
        if self.kind == "forecast":
            return "temperature" if self.temperature != 1.0 else "none"
        methods = [m.method for m in self.maps]
        return methods[0] if len(set(methods)) == 1 else ",".join(methods) if methods else "none"

    @property
    def identity(self) -> bool:
        """True when the calibration changes nothing (every map ``none``, T = 1)."""
        return all(m.method == "none" for m in self.maps) and self.temperature == 1.0

    def prob(self, p: np.ndarray) -> np.ndarray:
        """Binary: calibrated probabilities."""
        return self.maps[0](p) if self.maps else np.asarray(p, dtype=float)

    def survival(self, surv: np.ndarray) -> np.ndarray:
        """TTE: calibrated S at the edges (n, K+1) from raw S (n, K+1); S(0) = 1, non-increasing."""
        surv = np.asarray(surv, dtype=float)
        if not self.maps:
            return surv
        f = np.stack([m(1.0 - surv[:, k + 1]) for k, m in enumerate(self.maps)], 1)
        f = np.maximum.accumulate(f, axis=1)  # event probability never falls with the horizon
        return np.concatenate([np.ones((len(surv), 1)), 1.0 - f], 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"task": self.task, "kind": self.kind, "method": self.method,
                "maps": [asdict(m) for m in self.maps], "temperature": self.temperature, "fit": self.fit}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TaskCalibration:
        """Inverse of :meth:`to_dict`; a map of an unknown method is an error naming the task."""
        maps = [ProbMap(**m) for m in d.get("maps", [])]
        bad = [m.method for m in maps if m.method not in FITTERS]
        if bad:
            raise ValueError(f"calibration of task {d.get('task')!r}: unknown method {bad[0]!r}")
        return cls(str(d["task"]), str(d["kind"]), maps, float(d.get("temperature", 1.0)),
                   dict(d.get("fit", {})))


@dataclass
class Calibration:
    """Every task's calibration, saved as ``calibration.json`` in the finetuned model folder."""

    tasks: dict[str, TaskCalibration] = field(default_factory=dict)

    def get(self, task: str) -> TaskCalibration | None:
        """The task's calibration, None when it has none."""
        return self.tasks.get(task)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"version": FORMAT_VERSION, "tasks": {t: c.to_dict() for t, c in self.tasks.items()}}

    def save(self, directory: str | Path) -> Path:
        """Write ``<directory>/calibration.json``."""
        path = Path(directory) / CALIBRATION_FILE
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        return path

    @classmethod
    def load(cls, directory: str | Path) -> Calibration | None:
        """Read ``<directory>/calibration.json``; None when the folder has none (an uncalibrated model)."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.exists():
            return None
        d = json.loads(path.read_text())
        if d.get("version") != FORMAT_VERSION:
            raise ValueError(f"{path}: field 'version' is {d.get('version')!r}, expected {FORMAT_VERSION}")
        return cls({t: TaskCalibration.from_dict(c) for t, c in d.get("tasks", {}).items()})


def fit_binary(task: str, p: np.ndarray, y: np.ndarray, groups: np.ndarray, method: str,
               min_positives: int = 50, n_folds: int = 5, seed: int = 0) -> TaskCalibration:
    """A binary task's calibration from tuning-split probabilities ``p`` and labels ``y``."""
    m = method if method in ("auto", "platt", "isotonic") else "none"
    pmap, info = choose_map(p, y, groups, m, None, min_positives, n_folds, seed)
    return TaskCalibration(task, "binary", [pmap], fit=info)


def fit_tte(task: str, surv: np.ndarray, edges: Sequence[float], event: np.ndarray, duration: np.ndarray,
            groups: np.ndarray, method: str, n_folds: int = 5, seed: int = 0) -> TaskCalibration:
    """A tte task's calibration: per edge after 0, Platt (or none with ``auto``) on the IPCW-weighted event
    status from tuning-split survival curves ``surv`` (n, K+1)."""
    if method not in ("auto", "platt", "isotonic"):
        return TaskCalibration(task, "tte", [], fit={"method": "none"})
    m = "auto" if method == "auto" else "platt"  # isotonic is not offered for tte (module docstring)
    maps, infos = [], []
    for k, edge in enumerate(edges[1:]):
        y, w = censoring_weights(event, duration, float(edge))
        pmap, info = choose_map(1.0 - np.asarray(surv)[:, k + 1], y, groups, m, w, n_folds=n_folds, seed=seed,
                                candidates=("none", "platt"))
        maps.append(pmap)
        infos.append({"edge_days": float(edge), **info})
    return TaskCalibration(task, "tte", maps, fit={"edges": infos})


def _forecast_nll(z: np.ndarray, targets: Sequence[np.ndarray], t: float) -> float:
    zt = z / t
    lse = np.log(np.exp(zt - zt.max(1, keepdims=True)).sum(1)) + zt.max(1)
    return float(np.mean([-(zt[i, tg] - lse[i]).mean() for i, tg in enumerate(targets) if len(tg)]))


def fit_temperature(task: str, logits: np.ndarray, targets: Sequence[np.ndarray]) -> TaskCalibration:
    """A forecast task's temperature from tuning-split logits over the forecast codes (n, C) and each row's
    target code positions in them (the finetuning loss, minimised over log T in [-3, 3])."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=float)
    if not any(len(t) for t in targets):
        return TaskCalibration(task, "forecast", fit={"method": "none", "note": "no target codes"})
    res = minimize_scalar(lambda lt: _forecast_nll(z, targets, float(np.exp(lt))), bounds=(-3.0, 3.0),
                          method="bounded")
    t = float(np.exp(res.x))
    info = {"method": "temperature", "n": len(targets), "nll_raw": _forecast_nll(z, targets, 1.0),
            "nll_calibrated": _forecast_nll(z, targets, t)}
    return TaskCalibration(task, "forecast", temperature=t, fit=info)
