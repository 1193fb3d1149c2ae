"""A finetuned model on disk, and its predictions in the evaluation contract (see ``ehrfm.evaluate``).

Finetuned model folder (everything serving needs to rebuild it)::

    config.yaml, model.pt     the backbone (LoRA already merged): EHRFoundationModel.from_pretrained
    vocab.json                the vocabulary the token streams were written with
    heads.pt                  TaskHeads state dict
    heads.json                {"tasks": [...], "heads": [HeadSpec...], "shared_head": bool, "head_dropout": f,
                               "model_name": str, "forecast": {"topk": k, "rollout_steps": n}}
    calibration.json          optional: post-hoc calibration fitted on the tuning split
                              (:mod:`ehrfm.train.calibration`); absent = raw head outputs

Predictions: binary -> ``prob``; time-to-event -> ``risk`` = 1 - S(last edge), ``survival`` = S at every
edge and ``times_days`` = the edges; forecast -> ``topk_codes``/``topk_probs`` (see :mod:`generate`). With a
calibration they are the calibrated values, for every consumer (:func:`predict_batch`); the batch
predictions of :func:`predict` also keep the raw ``prob_raw`` / ``risk_raw`` of calibrated tasks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from ehrfm.data import TokenBudgetBatchSampler, TokenStreamDataset
from ehrfm.data.dataset import LIST_COLUMNS
from ehrfm.data.multitask import MultiTaskCollator
from ehrfm.layout import TokenPaths
from ehrfm.models import EHRFoundationModel, pool
from ehrfm.schema import PREDICTION_TIME, SUBJECT_ID
from ehrfm.train.calibration import Calibration
from ehrfm.train.generate import forecast_scores, topk_codes
from ehrfm.train.heads import HeadSpec, TaskHeads, survival_curve
from ehrfm.vocab import Vocabulary

HEADS_FILE, HEADS_SPEC = "heads.pt", "heads.json"


@dataclass
class FinetunedModel:
    """Backbone + heads + vocabulary + task list, as saved by :meth:`save`."""

    model: EHRFoundationModel
    heads: TaskHeads
    vocab: Vocabulary
    specs: list[HeadSpec]
    model_name: str = "ehrfm"
    topk: int = 10
    rollout_steps: int = 0
    calibration: Calibration | None = None
    """Post-hoc calibration applied by :func:`predict_batch` (None: raw outputs)."""

    @property
    def tasks(self) -> list[str]:
        """Task names, in head order."""
        return [s.task for s in self.specs]

    def save(self, directory: str | Path) -> Path:
        """Write the folder described in the module docstring."""
        directory = self.model.save_pretrained(directory)
        self.vocab.save(directory / "vocab.json")
        torch.save(self.heads.state_dict(), directory / HEADS_FILE)
        meta = {"tasks": self.tasks, "heads": [s.to_dict() for s in self.specs],
                "shared_head": self.heads.shared_head,
                "head_dropout": _head_dropout(self.heads), "model_name": self.model_name,
                "forecast": {"topk": self.topk, "rollout_steps": self.rollout_steps}}
        (directory / HEADS_SPEC).write_text(json.dumps(meta, indent=2))
        if self.calibration is not None:
            self.calibration.save(directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> FinetunedModel:
        """Rebuild from a folder written by :meth:`save`."""
        directory = Path(directory)
        if not (directory / HEADS_SPEC).exists() and (directory / "model" / HEADS_SPEC).exists():
            directory = directory / "model"  # the finetuning run folder
        if not (directory / HEADS_SPEC).exists():
            raise FileNotFoundError(f"{directory / HEADS_SPEC} not found: not a finetuned model folder "
                                    "(written by `ehrfm finetune` into <output>/model)")
        meta = json.loads((directory / HEADS_SPEC).read_text())
        model = EHRFoundationModel.from_pretrained(directory).eval()
        specs = [HeadSpec(**h) for h in meta["heads"]]
        heads = TaskHeads(specs, model.config.d_model, bool(meta["shared_head"]), float(meta["head_dropout"]))
        heads.load_state_dict(torch.load(directory / HEADS_FILE, map_location="cpu", weights_only=True))
        fc = meta.get("forecast", {})
        return cls(model, heads.eval(), Vocabulary.load(directory / "vocab.json"), specs, meta["model_name"],
                   int(fc.get("topk", 10)), int(fc.get("rollout_steps", 0)), Calibration.load(directory))


def _head_dropout(heads: TaskHeads) -> float:
    for m in heads.modules():
        if isinstance(m, torch.nn.Dropout):
            return float(m.p)
    return 0.0


@torch.no_grad()
def head_output(fm: FinetunedModel, spec: HeadSpec, batch: dict[str, Tensor]) -> Tensor:
    """The raw head output of ``spec.task`` for a collated batch: binary (b,) logits, tte (b, K) hazard
    logits, forecast (b, V) first-step LM logits."""
    out = fm.model(**{k: batch[k] for k in LIST_COLUMNS}, return_logits=False)
    pooled = pool(out.hidden, batch["lengths"])
    head = fm.model.lm_head(pooled) if spec.kind == "forecast" else fm.heads(spec.task, pooled)
    return cast(Tensor, head).float()


@torch.no_grad()
def predict_batch(fm: FinetunedModel, spec: HeadSpec, batch: dict[str, Tensor],
                  with_raw: bool = False) -> dict[str, list[Any]]:
    """Contract columns for one collated batch of ``spec.task`` rows, calibrated when ``fm`` has a
    calibration for the task; ``with_raw`` adds ``prob_raw`` / ``risk_raw`` of calibrated tasks."""
    cal = fm.calibration.get(spec.task) if fm.calibration is not None else None
    cal = None if cal is None or cal.identity else cal  # "none" chosen: raw outputs, no *_raw copies
    raw = head_output(fm, spec, batch)
    if spec.kind == "binary":
        p = torch.sigmoid(raw).double().cpu().numpy()
        out: dict[str, list[Any]] = {"prob": (cal.prob(p) if cal else p).tolist()}
        if with_raw and cal:
            out["prob_raw"] = p.tolist()
        return out
    if spec.kind == "tte":
        s = survival_curve(raw).double().cpu().numpy()
        surv = cal.survival(s) if cal else s
        out = {"risk": (1.0 - surv[:, -1]).tolist(), "survival": surv.tolist(),
               "times_days": [list(spec.edges_days)] * surv.shape[0]}
        if with_raw and cal:
            out["risk_raw"] = (1.0 - s[:, -1]).tolist()
        return out
    if cal is not None and fm.rollout_steps == 0:  # temperature of the first-step distribution
        raw = raw / cal.temperature
    scores = forecast_scores(fm.model, batch, fm.vocab, fm.rollout_steps, raw)
    codes, probs = topk_codes(scores, fm.vocab, fm.topk)
    return {"topk_codes": codes, "topk_probs": probs}


def task_batches(fm: FinetunedModel, tokens_dir: str | Path, task: str, split: str, max_tokens: int,
                 max_len: int | None = None, progress: bool = False
                 ) -> Iterator[tuple[TokenStreamDataset, list[int], dict[str, Tensor]]]:
    """(dataset, row indices, collated batch) over the rows of ``task`` in ``split``, length-bucketed; a row
    longer than ``max_tokens`` is predicted alone (every row gets its prediction, whatever the budget)."""
    ds = TokenStreamDataset(TokenPaths(Path(tokens_dir)).task(task), split=split, task=task)
    if len(ds) == 0:
        return
    collate = MultiTaskCollator(max_len)
    sampler = TokenBudgetBatchSampler(ds.lengths, max_tokens, shuffle=False, max_len=max_len,
                                      long_rows="alone")
    for idx in tqdm(list(sampler), desc=f"predict {task}/{split}", disable=not progress, leave=False):
        yield ds, list(idx), collate([{**ds[i], "task_idx": 0} for i in idx])


def predict(model_dir: str | Path | FinetunedModel, tokens_dir: str | Path,
            tasks: Sequence[str] | None = None, splits: Sequence[str] = ("tuning", "held_out"),
            max_tokens: int = 16384, max_len: int | None = None, model_name: str | None = None,
            progress: bool = True) -> pd.DataFrame:
    """Predictions of a finetuned model for the task rows in ``<tokens_dir>/tasks/<task>/`` of ``splits``.

    ``max_len``: collation cap; default none: rows are taken whole (``ehrfm tokenize`` already cut them at
    the tokens' ``max_len``, which finetuning checked against the model's).
    Returns one row per (task, subject_id, prediction_time) with the contract columns of
    ``ehrfm.evaluate`` (``model`` = ``model_name`` or the saved name).
    """
    fm = model_dir if isinstance(model_dir, FinetunedModel) else FinetunedModel.load(model_dir)
    fm.model.eval()
    fm.heads.eval()
    names = list(tasks) if tasks else fm.tasks
    unknown = [t for t in names if t not in fm.tasks]
    if unknown:
        raise ValueError(f"predict(): task(s) {unknown} have no head in this model (tasks: {fm.tasks})")
    frames = []
    for task in names:
        spec = next(s for s in fm.specs if s.task == task)
        for split in splits:
            cols: dict[str, list[Any]] = {SUBJECT_ID: [], PREDICTION_TIME: []}
            for ds, idx, batch in task_batches(fm, tokens_dir, task, split, max_tokens, max_len, progress):
                for k, v in predict_batch(fm, spec, batch, with_raw=True).items():
                    cols.setdefault(k, []).extend(v)
                cols[SUBJECT_ID].extend(int(ds.subject_ids[i]) for i in idx)
                assert ds.prediction_times is not None
                cols[PREDICTION_TIME].extend(ds.prediction_times[i] for i in idx)
            if not cols[SUBJECT_ID]:
                continue
            df = pd.DataFrame(cols)
            df["task"], df["split"], df["model"] = task, split, model_name or fm.model_name
            frames.append(df)
    if not frames:
        raise ValueError(f"predict(): no task rows for tasks {names} in splits {list(splits)} under "
                         f"{tokens_dir}")
    out = pd.concat(frames, ignore_index=True)
    out[SUBJECT_ID] = out[SUBJECT_ID].astype("int64")
    out[PREDICTION_TIME] = pd.to_datetime(out[PREDICTION_TIME])
    lead = [SUBJECT_ID, PREDICTION_TIME, "task", "split", "model"]
    return out[lead + [c for c in out.columns if c not in lead]]
