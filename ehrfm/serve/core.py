"""The serving bundle: a finetuned model plus everything needed to go from raw events to predictions.

A *serving folder* is a finetuned model folder (see :mod:`ehrfm.train.predict`) with three more files::

    bins.json        numeric-value bins the token streams were written with (``ehrfm prepare``)
    serve.json       {"max_len": collation length, "tokenize": TokenizerConfig dict, "limits": {...}}
    tasks/*.yaml     the task specifications (descriptions go into FHIR RiskAssessment outcomes)

Prediction itself is :func:`ehrfm.train.predict.predict_batch`, the function batch evaluation uses, so
serving, Spark scoring and ``ehrfm finetune``'s predictions share ONE code path; this module only turns
events into task rows (:func:`ehrfm.tokenize.tokenize_for_prediction`) and rows into batches.
Explanations, when asked for, are :func:`ehrfm.explain.explainer.explain_rows` of the same rows (the
population stage's function), with their tokens aligned back to the patient's events.
No MLflow here: :mod:`ehrfm.serve.pyfunc` wraps it.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml

from ehrfm import resources
from ehrfm.config.base import ConfigError
from ehrfm.config.serve import Limits as Limits  # re-exported: serving code and users import it from here
from ehrfm.config.serve import ServeConfig
from ehrfm.data.multitask import MultiTaskCollator
from ehrfm.devices import resolve_device, to_device
from ehrfm.gcstate import shared_setting
from ehrfm.layout import TokenPaths
from ehrfm.prepare.bins import Bins, load_bins
from ehrfm.schema import PREDICTION_TIME, SUBJECT_ID, TIME
from ehrfm.serve.locate import SERVE_JSON as SERVE_JSON  # re-exported: one definition
from ehrfm.tokenize import TokenizerConfig, tokenize_for_prediction
from ehrfm.train.heads import HeadSpec
from ehrfm.train.predict import HEADS_SPEC, FinetunedModel, predict_batch

if TYPE_CHECKING:
    from ehrfm.explain.explainer import RowExplanation

BINS_JSON, TASKS_DIR = "bins.json", "tasks"
RESULT_COLUMNS = ("prob", "risk", "survival", "times_days", "topk_codes", "topk_probs")
EXPLAINED_KINDS = ("binary", "tte")
"""Task kinds with a scalar output to attribute (forecasting has none)."""


def _finetuned_dir(path: Path) -> Path:
    return (path / "model" if not (path / HEADS_SPEC).exists() and (path / "model" / HEADS_SPEC).exists()
            else path)


def build_serving_dir(model_dir: str | Path, output: str | Path, *, tokens_dir: str | Path | None = None,
                      bins: str | Path | None = None, tasks_dir: str | Path | None = None,
                      config: ServeConfig | None = None) -> Path:
    """Copy a finetuned model folder (or a finetuning output folder) into ``output`` and add bins,
    ``serve.json`` and task YAMLs.

    ``bins``: explicit ``bins.json``; else ``<model>/bins.json``, else ``<tokens_dir>/bins.json``. Without a
    ``config``, the tokenizer rules (and with them the served row length ``max_len``) come from the tokens'
    ``tokenize.json`` when present — the one record of how the training rows were cut.
    """
    src = _finetuned_dir(Path(model_dir))
    if not (src / HEADS_SPEC).exists():
        raise FileNotFoundError(f"{model_dir}: no {HEADS_SPEC} (expected a finetuned model folder from "
                                "`ehrfm finetune`)")
    out = Path(output)
    shutil.copytree(src, out, dirs_exist_ok=True)
    cands = ([Path(bins)] if bins
             else [src / BINS_JSON] + ([Path(tokens_dir) / BINS_JSON] if tokens_dir else []))
    found = next((c for c in cands if c.exists()), None)
    if found is None:
        raise FileNotFoundError(f"bins.json not found (looked at {[str(c) for c in cands]}): pass --tokens "
                                "(the tokens folder of the training data)")
    load_bins(found)  # fail now, not at serving time
    if found.resolve() != (out / BINS_JSON).resolve():
        shutil.copy(found, out / BINS_JSON)
    cfg = config or ServeConfig()
    tok_json = TokenPaths(Path(tokens_dir)).meta if tokens_dir else None
    if config is None and tok_json is not None and tok_json.exists():
        cfg = cfg.replace(
            tokenize=TokenizerConfig.from_dict(json.loads(tok_json.read_text()).get("config", {})))
    (out / SERVE_JSON).write_text(json.dumps(cfg.to_dict(), indent=2))
    meta = json.loads((out / HEADS_SPEC).read_text())
    task_src = Path(tasks_dir) if tasks_dir else resources.tasks_dir()
    (out / TASKS_DIR).mkdir(exist_ok=True)
    for t in meta["tasks"]:
        if (task_src / f"{t}.yaml").exists():
            shutil.copy(task_src / f"{t}.yaml", out / TASKS_DIR / f"{t}.yaml")
    return out


DEVICE_ENV = "EHRFM_SERVE_DEVICE"
"""The device serving runs the model on when the caller names none: cpu (default), cuda, cuda:<n> or auto."""


class Scorer:
    """A loaded serving folder: events (or token rows) in, one result dict per (patient, task) out."""

    def __init__(self, directory: str | Path, device: str | None = None) -> None:
        """Load everything in ``directory`` (see the module docstring), eval mode, on ``device`` (default:
        ``$EHRFM_SERVE_DEVICE``, else the CPU; see :func:`ehrfm.devices.resolve_device`). Rows are collated on
        the CPU and moved there; results come back as Python values."""
        d = Path(directory)
        self.device = (resolve_device(device, "device") if device is not None
                       else resolve_device(os.environ.get(DEVICE_ENV, "cpu"), f"${DEVICE_ENV}"))
        self.fm = FinetunedModel.load(d)
        self.fm.model.to(self.device)
        self.fm.heads.to(self.device)
        self.bins: Bins = load_bins(d / BINS_JSON)
        self.config = (ServeConfig.from_dict(json.loads((d / SERVE_JSON).read_text()))
                       if (d / SERVE_JSON).exists() else ServeConfig())
        self.tokenize_cfg = self.config.tokenize
        model_len = self.fm.model.config.max_len
        if model_len and model_len < self.tokenize_cfg.max_len:
            raise ConfigError(f"{d / SERVE_JSON}: tokenize.max_len={self.tokenize_cfg.max_len} is longer "
                              f"than the model's max_len={model_len}; serve shorter rows (register --max_len "
                              f"{model_len})")
        self.collate = MultiTaskCollator(self.tokenize_cfg.max_len)
        self.descriptions = task_descriptions(d / TASKS_DIR)

    @property
    def tasks(self) -> list[str]:
        """Tasks the model has heads for (head order)."""
        return self.fm.tasks

    def spec(self, task: str) -> HeadSpec:
        """Head spec of ``task``; ``KeyError`` naming the known tasks."""
        for s in self.fm.specs:
            if s.task == task:
                return s
        raise KeyError(f"task {task!r} is not served by this model (tasks: {self.tasks})")

    def predict_rows(self, task: str, rows: Sequence[dict[str, Any]],
                     batch_size: int = 32) -> list[dict[str, Any]]:
        """Contract columns (``prob`` | ``risk``/``survival``/``times_days`` | ``topk_*``) for token rows
        (TOKENS_SCHEMA dicts) of ``task``, in input order, through :func:`predict_batch`."""
        spec = self.spec(task)
        out: list[dict[str, Any]] = []
        for i in range(0, len(rows), batch_size):
            chunk = rows[i : i + batch_size]
            batch = to_device(self.collate([{**r, "task_idx": 0} for r in chunk]), self.device)
            cols = predict_batch(self.fm, spec, batch)
            out.extend({k: v[j] for k, v in cols.items()} for j in range(len(chunk)))
        return out

    def explain_row(self, task: str, row: dict[str, Any], events: pd.DataFrame,
                    prediction_time: Any) -> RowExplanation:
        """Integrated-gradients explanation of one task row built from ``events`` (bounded by
        ``explain_ig``), its events aligned back to the rows of ``events`` (raw values, units, ``source``
        index); when the row cannot be aligned the events show their token values instead."""
        from ehrfm.explain.aggregate import align_events
        from ehrfm.explain.explainer import explain_rows, kept_row

        ig = self.config.explain_ig
        try:
            sources = align_events(kept_row(row, ig.max_tokens), events, self.fm.vocab, self.tokenize_cfg,
                                   prediction_time)
        except ValueError:  # not expected for rows built here; the explanation stands without values
            return explain_rows(self.fm, self.spec(task), [row], ig)[0]
        return explain_rows(self.fm, self.spec(task), [row], ig, [sources], [events])[0]

    def score_events(self, events: pd.DataFrame, prediction_time: Any = None,
                     tasks: Sequence[str] | None = None, explain: bool = False) -> list[dict[str, Any]]:
        """One patient's events (EVENTS_SCHEMA columns) -> one dict per task with ``subject_id``,
        ``prediction_time``, ``task``, ``kind`` and the contract columns.

        ``prediction_time`` (inclusive) defaults to the last event time; events after it are never seen.
        ``explain``: binary and time-to-event results also carry ``explanation``
        (:class:`~ehrfm.explain.explainer.RowExplanation`, see :meth:`explain_row`).
        """
        names = list(tasks) if tasks else self.tasks
        for t in names:
            self.spec(t)
        pt = default_prediction_time(events) if prediction_time is None else pd.Timestamp(prediction_time)
        rows = tokenize_for_prediction(events, self.fm.vocab, self.bins, self.tokenize_cfg, pt, names)
        results = []
        for t, row in zip(names, rows, strict=True):
            res = self.predict_rows(t, [row])[0]
            out = {SUBJECT_ID: int(row[SUBJECT_ID]), PREDICTION_TIME: pd.Timestamp(row[PREDICTION_TIME]),
                   "task": t, "kind": self.spec(t).kind, **res}
            if explain and self.spec(t).kind in EXPLAINED_KINDS:
                out["explanation"] = self.explain_row(t, row, events, pt)
            results.append(out)
        return results


def default_prediction_time(events: pd.DataFrame) -> pd.Timestamp:
    """The last event time (the default ``prediction_time``); ``ValueError`` when no event has a time."""
    times = pd.to_datetime(events[TIME]).dropna() if len(events) else pd.Series([], dtype="datetime64[us]")
    if times.empty:
        raise ValueError("prediction_time: the patient has no timed event; pass prediction_time explicitly")
    return pd.Timestamp(times.max())


def task_descriptions(folder: Path) -> dict[str, str]:
    """task -> one-line description from ``tasks/*.yaml`` (empty when the folder is absent)."""
    out: dict[str, str] = {}
    for p in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        spec = yaml.safe_load(p.read_text()) or {}
        text = " ".join(str(spec.get("description", p.stem)).split())
        out[str(spec.get("name", p.stem))] = text.split(". ")[0].rstrip(".")  # the first sentence
    return out


def _pause_gc() -> bool:
    was_enabled = gc.isenabled()
    gc.disable()
    return was_enabled


_gc_paused = shared_setting(_pause_gc, lambda was_enabled: gc.enable() if was_enabled else None)


def gc_paused() -> AbstractContextManager[None]:
    """Pause Python's cyclic garbage collector while a request runs (re-entrant, thread-safe; the last
    request out restores the state found by the first one in; :func:`ehrfm.gcstate.shared_setting`).

    Why: a 10 MB Bundle parses into ~400k dicts and lists, and every few hundred allocations the collector
    scans the young objects, then the older generations over and over: measured, it more than doubles the
    parse time (orjson 119 -> 44 ms without it). Reference counting frees a request's objects when it ends;
    the rare cycle waits for the next collection after the pause.
    """
    return _gc_paused()
