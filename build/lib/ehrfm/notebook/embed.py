"""Patient representations from a trained backbone: embeddings (``pool`` of the last hidden state),
visit-prefix trajectories and embedding-space outlier scores (notebook 03)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.neighbors import NearestNeighbors

from ehrfm.data.collate import Collator
from ehrfm.models import EHRFoundationModel, pool
from ehrfm.notebook.tables import STREAMS


def load_backbone(run_dir: str | Path) -> EHRFoundationModel:
    """The backbone saved by ``ehrfm pretrain`` or ``ehrfm finetune`` (``<run>/model`` or the folder itself)."""
    d = Path(run_dir)
    if (d / "model" / "config.yaml").exists():
        d = d / "model"
    if not (d / "config.yaml").exists():
        raise FileNotFoundError(f"{run_dir}: no model/config.yaml (the output folder of `ehrfm "
                                "pretrain`/`finetune`)")
    return EHRFoundationModel.from_pretrained(d).eval()


def _items(rows: pd.DataFrame | Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    recs = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else [dict(r) for r in rows]
    out = []
    for r in recs:
        # optional streams may be absent
        item: dict[str, Any] = {k: np.asarray(r[k]) for k in STREAMS if k in r}
        item["length"] = len(item["concept_ids"])
        item["subject_id"] = int(r.get("subject_id", -1))
        out.append(item)
    return out


@torch.no_grad()
def embed(model: EHRFoundationModel, rows: pd.DataFrame | Sequence[Mapping[str, Any]], batch_size: int = 16,
          max_len: int | None = None) -> np.ndarray:
    """(n, d_model) float32: the last real token's final hidden state of each token row.

    rows: token rows (the token streams; a DataFrame from ``load_token_rows`` or dicts); rows longer than
    ``max_len`` keep their most recent tokens. Batches are sorted by length so padding stays small.
    """
    items = _items(rows)
    if not items:
        return np.zeros((0, model.config.d_model), dtype=np.float32)
    collate = Collator(max_len=max_len)
    order = np.argsort([it["length"] for it in items], kind="stable")
    out = np.zeros((len(items), model.config.d_model), dtype=np.float32)
    for start in range(0, len(items), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([items[i] for i in idx])
        h = model(**{k: batch[k] for k in STREAMS}, return_logits=False).hidden  # (b, L, d)
        out[idx] = pool(h, batch["lengths"]).float().numpy()  # (b, d)
    return out


def visit_prefixes(row: Mapping[str, Any], max_points: int = 12) -> tuple[list[dict[str, Any]], list[int]]:
    """Prefixes of one token row ending after successive visits (at most ``max_points``, evenly spaced,
    always including the full row). Returns (prefix rows, the visit number each prefix ends with)."""
    vo = np.asarray(row["visit_orders"], dtype=np.int64)
    n = len(vo)
    # a prefix ends where the next token belongs to a later visit (the interval token keeps the old number)
    ends = [i + 1 for i in range(n - 1) if vo[i + 1] > vo[i] and vo[i] > 0] + [n]
    ends = sorted(set(ends))
    if len(ends) > max_points:
        pick = np.unique(np.linspace(0, len(ends) - 1, max_points).round().astype(int))
        ends = [ends[i] for i in pick]
    prefixes = [{k: np.asarray(row[k])[:e] for k in STREAMS
                 if k in row} | {"subject_id": row.get("subject_id", -1)} for e in ends]
    return prefixes, [int(vo[e - 1]) for e in ends]


def trajectories(model: EHRFoundationModel, rows: pd.DataFrame, max_points: int = 12,
                 max_len: int | None = None) -> pd.DataFrame:
    """Embeddings of visit prefixes for each row: columns subject_id, step, visit, and ``emb`` (d,) arrays.

    All prefixes go through :func:`embed` together (batched by length)."""
    recs: list[dict[str, Any]] = []
    prefixes: list[dict[str, Any]] = []
    for rec in rows.to_dict("records"):
        r = {str(k): v for k, v in rec.items()}
        pre, visits = visit_prefixes(r, max_points)
        prefixes.extend(pre)
        recs.extend({"subject_id": int(r["subject_id"]), "step": k, "visit": v} for k, v in enumerate(visits))
    out = pd.DataFrame(recs, columns=["subject_id", "step", "visit"])
    emb = embed(model, prefixes, max_len=max_len)
    out["emb"] = list(emb)
    return out


def outlier_scores(emb: np.ndarray, k: int = 10) -> np.ndarray:
    """(n,) mean Euclidean distance to the ``k`` nearest other rows of the standardized embeddings (n, d)."""
    if len(emb) < 2:
        return np.zeros(len(emb))
    z = (emb - emb.mean(0)) / (emb.std(0) + 1e-6)
    k = min(k, len(emb) - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(z).kneighbors(z)
    mean: np.ndarray = dist[:, 1:].mean(1)  # column 0 is the row itself
    return mean
