"""Query-conditioned pretraining and zero-shot answers (docs/query.md).

A *query* is (a set of target codes, a horizon bucket); its answer at a cut point of a patient's row is 1 when
any target code occurs in ``(cut time, cut time + horizon]``. Cut points sit at event boundaries: the prefix
holds every token timed at or before the cut's time (prediction time is inclusive), nothing after it.

Censoring: a query whose window runs past the end of the row with no occurrence is unknown (dropped from the
loss and the evaluation), except when the patient dies after the cut: nothing occurs after death, so the
answer is then known (negative unless a target occurred first; positive when the target is death).

Pretraining (``ehrfm pretrain --query.weight w``): for each row, :class:`QuerySampler` draws cut points and
queries (target codes by tempered frequency, some of them sets, never a held-out code), :func:`answers`
labels them from the row's own future, and the model's :class:`~ehrfm.models.model.QueryHead` answers from
the hidden state at the cut (BCE, added to the next-token loss with weight w).

Zero-shot: :func:`task_query` writes a task as a query; :func:`predict_task_rows` answers it on the task rows
and :func:`write_task_predictions` writes the answers as a model (``query_zero_shot``) for ``ehrfm
evaluate``; :func:`answer_frame` answers held-out (code, horizon) queries at cut points of held-out
patients' rows, with their labels and a count baseline.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ehrfm.config.train import QueryConfig
from ehrfm.schema import DEATH_CODE, PAD_ID
from ehrfm.vocab import Vocabulary

PROTECTED_PREFIXES = ("ENCOUNTER//", DEATH_CODE)
"""Codes never held out: our tasks' outcomes are written with them."""
UNKNOWN, NEGATIVE, POSITIVE = -1, 0, 1


def target_codes(vocab: Vocabulary) -> list[int]:
    """Ids of the event codes a query can target: ``CLASS//...`` codes and MEDS_DEATH, not the special,
    interval, value-bin, task or static (demographic) tokens."""
    from ehrfm.config.tokenize import TokenizerConfig

    static = TokenizerConfig().static_prefixes
    return [i for i, t in enumerate(vocab.tokens)
            if ("//" in t or t == DEATH_CODE) and not t.startswith(static) and not t.startswith("[")]


def _stable_hash(code: str) -> int:
    # str hash is salted per process: the held-out set must be the same in pretraining and evaluation
    return int.from_bytes(hashlib.sha256(code.encode()).digest()[:8], "little")


def heldout_codes(vocab: Vocabulary, mod: int) -> list[int]:
    """Target codes held out of pretraining queries: stable hash divisible by ``mod`` (0: none), never a
    protected (encounter, death) code."""
    if mod <= 0:
        return []
    return [i for i in target_codes(vocab) if not vocab.tokens[i].startswith(PROTECTED_PREFIXES)
            and _stable_hash(vocab.tokens[i]) % mod == 0]


def horizon_index(horizons: Sequence[float], days: float) -> int:
    """The bucket nearest ``days`` on a log scale."""
    if days <= 0:
        raise ValueError(f"horizon days={days}: must be > 0")
    return int(np.argmin([abs(math.log(h / days)) for h in horizons]))


@dataclass
class QueryBatch:
    """Queries over the rows of one batch: query i asks about row ``rows[i]`` cut after position
    ``cut_pos[i]``, targets ``targets[i]`` (code ids padded with [PAD]) within bucket ``horizon_idx[i]``."""

    rows: Tensor
    cut_pos: Tensor
    targets: Tensor
    horizon_idx: Tensor

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def to(self, device: torch.device | str) -> QueryBatch:
        """The same queries on ``device``."""
        return QueryBatch(self.rows.to(device), self.cut_pos.to(device), self.targets.to(device),
                          self.horizon_idx.to(device))


def cut_candidates(times: Tensor, lengths: Tensor) -> Tensor:
    """(B, L) bool: positions p that can end a prefix: a real token with a later-timed real token after it
    (p + 1 < length and times[p + 1] > times[p]), so the prefix holds every token timed at or before it.
    Position 0 ([CLS]) is never a cut."""
    b, width = times.shape
    pos = torch.arange(width, device=times.device).expand(b, width)
    later = torch.zeros_like(pos, dtype=torch.bool)
    later[:, :-1] = times[:, 1:] > times[:, :-1]
    return later & (pos >= 1) & (pos + 1 < lengths.unsqueeze(1))


class QuerySampler:
    """Draws cut points and queries for a batch of rows (see the module docstring)."""

    def __init__(self, vocab: Vocabulary, cfg: QueryConfig) -> None:
        held = set(heldout_codes(vocab, cfg.holdout_mod))
        ids = [i for i in target_codes(vocab) if i not in held]
        if not ids:
            raise ValueError("query: the vocabulary has no target codes left to sample (query.holdout_mod)")
        self.cfg = cfg
        self.code_ids = torch.tensor(ids, dtype=torch.long)
        counts = torch.tensor([float(vocab.counts.get(vocab.tokens[i], 0)) + 1.0 for i in ids])
        self.probs = counts ** cfg.temperature
        self.probs /= self.probs.sum()

    def sample(self, times: Tensor, lengths: Tensor, gen: torch.Generator) -> QueryBatch:
        """``cuts_per_row`` cuts (with replacement) per row that has one, ``queries_per_cut`` queries each;
        every tensor on CPU."""
        cfg = self.cfg
        cand = cut_candidates(times.cpu(), lengths.cpu())
        rows = torch.nonzero(cand.any(1)).squeeze(1)
        if len(rows) == 0:
            e = torch.zeros(0, dtype=torch.long)
            return QueryBatch(e, e, torch.zeros(0, cfg.max_set_size, dtype=torch.long), e)
        cuts = torch.multinomial(cand[rows].float(), cfg.cuts_per_row, replacement=True, generator=gen)
        per = cfg.queries_per_cut
        rows_q = rows.repeat_interleave(cfg.cuts_per_row * per)
        cut_q = cuts.reshape(-1).repeat_interleave(per)
        n, k = len(rows_q), cfg.max_set_size
        kk = min(k, len(self.code_ids))
        pick = torch.multinomial(self.probs.expand(n, -1), kk, replacement=False, generator=gen)
        targets = torch.full((n, k), PAD_ID, dtype=torch.long)
        targets[:, :kk] = self.code_ids[pick]
        is_set = torch.rand(n, generator=gen) < cfg.set_prob
        size = torch.where(is_set, torch.randint(2, max(k, 2) + 1, (n,), generator=gen), torch.ones(n).long())
        targets[torch.arange(k).expand(n, k) >= size.clamp(max=kk).unsqueeze(1)] = PAD_ID
        horizon = torch.randint(0, len(cfg.horizons), (n,), generator=gen)
        return QueryBatch(rows_q, cut_q, targets, horizon)


def answers(concept_ids: Tensor, times: Tensor, lengths: Tensor, q: QueryBatch, horizons_days: Tensor,
            death_id: int | None) -> Tensor:
    """Answer of each query from its row's own future: (n,) int8, 1 / 0 / -1 (unknown: censored).

    concept_ids, times (B, L), lengths (B,); ``horizons_days`` (H,) the bucket values; ``death_id`` the
    MEDS_DEATH token (None: not in the vocabulary)."""
    ids = concept_ids[q.rows]
    t = times[q.rows].double()
    n = lengths[q.rows]
    pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
    after = (pos > q.cut_pos.unsqueeze(1)) & (pos < n.unsqueeze(1))
    t_cut = t.gather(1, q.cut_pos.unsqueeze(1)).squeeze(1)
    t_end = t.gather(1, (n - 1).unsqueeze(1)).squeeze(1)
    end = t_cut + horizons_days.to(t.device).double()[q.horizon_idx]
    hit = ((ids.unsqueeze(2) == q.targets.unsqueeze(1)) & (q.targets != PAD_ID).unsqueeze(1)).any(2)
    positive = (hit & after & (t <= end.unsqueeze(1))).any(1)
    died = (after & (ids == death_id)).any(1) if death_id is not None else torch.zeros_like(positive)
    known = positive | (end <= t_end) | died
    out = torch.where(positive, POSITIVE, NEGATIVE)
    return torch.where(known, out, UNKNOWN).to(torch.int8)


def query_bce(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean BCE over the known answers (0 when none is known, keeping the graph)."""
    known = labels >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known].float(), labels[known].float())


def death_token(vocab: Vocabulary) -> int | None:
    """The MEDS_DEATH token id, or None when the vocabulary has none."""
    return vocab.id(DEATH_CODE) if DEATH_CODE in vocab else None


# --- zero-shot ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskQuery:
    """A task written as a query: P(task) = P(query) or, with ``negate``, 1 - P(query)."""

    task: str
    targets: list[int]
    horizon_idx: int
    negate: bool
    note: str


def task_query(rule: Any, vocab: Vocabulary, horizons: Sequence[float],
               inhospital_days: float = 7.0) -> TaskQuery:
    """The query of a task's :class:`~ehrfm.simulate.rules.OutcomeRule`:

    * ``codes`` within a window (readmission, post-discharge death): the outcome codes, the bucket nearest the
      window;
    * ``codes`` until the encounter ends (in-hospital death): the outcome codes within ``inhospital_days``
      (a query has no "until the stay ends": an approximation);
    * ``encounter_duration_gt`` (long stay): 1 - P(an ``ENCOUNTER//*//END`` code within the bucket nearest the
      rest of the duration after prediction time).
    """
    horizon = rule.horizon_days
    if rule.duration_days is not None:
        ends = [i for i, t in enumerate(vocab.tokens) if t.startswith("ENCOUNTER//") and t.endswith("//END")]
        h = horizon_index(horizons, horizon)
        return TaskQuery(rule.task, ends, h, True, f"1 - P(an encounter END within {horizons[h]:g} d); "
                         f"the stay's remaining {horizon:g} d rounded to the bucket")
    ids = torch.nonzero(rule.outcome_mask.cpu()).squeeze(1).tolist()
    if rule.until_visit_end:
        h = horizon_index(horizons, inhospital_days)
        return TaskQuery(rule.task, ids, h, False, f"P(outcome within {horizons[h]:g} d) for 'until the "
                         "encounter ends' (approximation)")
    h = horizon_index(horizons, horizon)
    return TaskQuery(rule.task, ids, h, False, f"P(outcome within {horizons[h]:g} d)")


def _hidden_at(model: Any, batch: dict[str, Tensor], positions: Tensor) -> Tensor:
    from ehrfm.schema import TOKEN_STREAMS

    out = model(**{k: batch[k] for k in TOKEN_STREAMS if k in batch}, return_logits=False)
    return out.hidden  # type: ignore[no-any-return]


@torch.no_grad()
def predict_task_rows(model: Any, batch: dict[str, Tensor], tq: TaskQuery) -> Tensor:
    """P(task) (R,) for prompt-free task prefixes (``ehrfm.simulate.futures.strip_prompt``): the query
    answered at each row's last token."""
    hidden = _hidden_at(model, batch, batch["lengths"])
    state = hidden[torch.arange(hidden.shape[0], device=hidden.device), batch["lengths"] - 1]
    r = state.shape[0]
    targets = torch.tensor(tq.targets, dtype=torch.long, device=state.device).expand(r, -1)
    hz = torch.full((r,), tq.horizon_idx, dtype=torch.long, device=state.device)
    p = torch.sigmoid(model.query_logits(state, targets, hz).float())
    return 1.0 - p if tq.negate else p


@dataclass(frozen=True)
class HeldOutQuery:
    """A held-out (code, horizon) query for the zero-shot evaluation."""

    name: str
    code: int
    horizon_idx: int


def heldout_queries(vocab: Vocabulary, cfg: QueryConfig, horizons_days: Sequence[float] = (7.0, 30.0, 365.0)
                    ) -> list[HeldOutQuery]:
    """Every held-out code with each of ``horizons_days`` (snapped to the buckets)."""
    hs = sorted({horizon_index(cfg.horizons, d) for d in horizons_days})
    return [HeldOutQuery(f"{vocab.tokens[c]} within {cfg.horizons[h]:g}d", c, h)
            for c in heldout_codes(vocab, cfg.holdout_mod) for h in hs]


@torch.no_grad()
def answer_frame(model: Any, batch: dict[str, Tensor], subject_ids: Sequence[int],
                 queries: Sequence[HeldOutQuery], cuts_per_row: int, gen: torch.Generator,
                 death_id: int | None) -> dict[str, list[Any]]:
    """Held-out queries at ``cuts_per_row`` sampled cuts of each row of a (pretraining-row) batch: columns
    ``query``, ``subject_id``, ``label`` (known answers only), ``prob`` (the query head) and ``prior_count``
    (occurrences of the code in the prefix: a count baseline)."""
    cand = cut_candidates(batch["times"].cpu(), batch["lengths"].cpu())
    rows = torch.nonzero(cand.any(1)).squeeze(1)
    cols: dict[str, list[Any]] = {"query": [], "subject_id": [], "label": [], "prob": [], "prior_count": []}
    if len(rows) == 0 or not queries:
        return cols
    cuts = torch.multinomial(cand[rows].float(), cuts_per_row, replacement=False, generator=gen) if int(
        cand[rows].sum(1).min()) >= cuts_per_row else torch.multinomial(cand[rows].float(), cuts_per_row,
                                                                         replacement=True, generator=gen)
    nq = len(queries)
    rows_q = rows.repeat_interleave(cuts_per_row * nq)
    cut_q = cuts.reshape(-1).repeat_interleave(nq)
    codes = torch.tensor([q.code for q in queries]).repeat(len(rows) * cuts_per_row)
    hz = torch.tensor([q.horizon_idx for q in queries]).repeat(len(rows) * cuts_per_row)
    dev = batch["concept_ids"].device
    qb = QueryBatch(rows_q, cut_q, codes.unsqueeze(1), hz).to(dev)
    assert model.query_head is not None
    labels = answers(batch["concept_ids"], batch["times"], batch["lengths"], qb,
                     model.query_head.horizons_days, death_id)
    hidden = _hidden_at(model, batch, batch["lengths"])
    logits = model.query_logits(hidden[qb.rows, qb.cut_pos], qb.targets, qb.horizon_idx)
    ids = batch["concept_ids"][qb.rows]
    pos = torch.arange(ids.shape[1], device=dev).unsqueeze(0)
    prior = ((ids == qb.targets) & (pos <= qb.cut_pos.unsqueeze(1))).sum(1)
    keep = (labels >= 0).cpu().numpy()
    qi = np.tile(np.arange(nq), len(rows) * cuts_per_row)[keep]
    cols["query"] = [queries[i].name for i in qi]
    cols["subject_id"] = [int(subject_ids[int(r)]) for r in rows_q.numpy()[keep]]
    cols["label"] = labels.cpu().numpy()[keep].astype(int).tolist()
    cols["prob"] = torch.sigmoid(logits.float()).cpu().numpy()[keep].tolist()
    cols["prior_count"] = prior.cpu().numpy()[keep].astype(int).tolist()
    return cols


def write_task_predictions(layout: Any, model_dir: Path, tasks: Sequence[str], splits: Sequence[str],
                           name: str = "query_zero_shot") -> dict[str, Any]:
    """Answer each task's query (:func:`task_query`) on its task rows of ``splits`` with the query-pretrained
    model in ``model_dir`` and write ``layout.simulate_run(name)``: ``predictions.parquet`` (the
    ehrfm.evaluate binary contract: ``prob``, model = ``name``) and ``summary.json`` last, so that
    ``ehrfm evaluate`` reports it beside the finetuned and the simulated zero-shot models. Returns the
    summary (the query of each task, seconds per row)."""
    import json
    import time

    import pandas as pd

    from ehrfm.data import TokenStreamDataset
    from ehrfm.data.collate import Collator
    from ehrfm.labels.parse import load_task
    from ehrfm.models import EHRFoundationModel
    from ehrfm.schema import PREDICTION_TIME, SUBJECT_ID
    from ehrfm.simulate.futures import strip_prompt
    from ehrfm.simulate.rules import OutcomeRule

    model = EHRFoundationModel.from_pretrained(model_dir).eval()
    if model.query_head is None:
        raise ValueError(f"pretrained={model_dir}: no query head (pretrain with query.weight > 0)")
    horizons = model.query_head.horizons_days.tolist()
    vocab = Vocabulary.load(layout.token_paths.vocab)
    collate = Collator()
    frames, notes, secs = [], {}, {}
    for task in tasks:
        tq = task_query(OutcomeRule.from_spec(load_task(task), vocab), vocab, horizons)
        notes[task] = tq.note
        t0, n = time.time(), 0
        for split in splits:
            ds = TokenStreamDataset(layout.token_paths.task(task), split=split, task=task)
            if len(ds) == 0:
                continue
            probs: list[float] = []
            for i in range(0, len(ds), 64):
                items = [ds[j] for j in range(i, min(i + 64, len(ds)))]
                batch = strip_prompt(collate(items), vocab, task, [it["subject_id"] for it in items])
                probs += predict_task_rows(model, batch, tq).tolist()
            frames.append(pd.DataFrame({SUBJECT_ID: np.asarray(ds.subject_ids, dtype="int64"),
                                        PREDICTION_TIME: pd.to_datetime(pd.Series(ds.prediction_times)),
                                        "task": task, "split": split, "model": name, "prob": probs}))
            n += len(ds)
        secs[task] = round((time.time() - t0) / max(n, 1), 5)
    if not frames:
        raise ValueError(f"tasks={list(tasks)}: no task rows in splits {list(splits)}")
    run = layout.simulate_run(name)
    run.root.mkdir(parents=True, exist_ok=True)
    run.summary.unlink(missing_ok=True)  # evaluate reads finished runs only: summary.json comes last
    pd.concat(frames, ignore_index=True).to_parquet(run.predictions, index=False)
    summary = {"model_name": name, "predictions": str(run.predictions), "queries": notes,
               "seconds_per_row": secs, "pretrained": str(model_dir)}
    run.summary.write_text(json.dumps(summary, indent=2))
    return summary
