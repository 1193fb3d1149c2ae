"""Stand-in token-stream generator: writes a small dataset in exactly :data:`ehrfm.schema.TOKENS_SCHEMA`
plus a ``vocab.json``, so pretraining and tests run before (and independently of) the real tokenizer.

Layout written (the same as ``ehrfm tokenize``)::

    <out>/vocab.json
    <out>/pretrain/part-0.parquet        one row per subject, split train/tuning/held_out

Each sequence: ``[CLS]``, static codes, then visits ``[VS] code... [VE] [REG]`` separated by interval
tokens (``[W0..3]`` weeks, ``[M0..12]`` months, ``[LT]``), with increasing ages/times, visit orders
1..V and alternating visit segments 1/2. Codes are drawn from a few latent "conditions" with
persistent per-subject profiles and a code -> value-bin follow-up, so there is structure to learn
(the loss can go well below the uniform baseline). Nothing here is clinical.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ehrfm.schema import CLS, INTERVAL_TOKENS, REG, TOKENS_SCHEMA, VE, VS, TokenType
from ehrfm.vocab import Vocabulary

N_CONDITIONS = 6


def standin_vocabulary(n_codes: int = 120, n_bins: int = 5) -> Vocabulary:
    """Specials, interval tokens, ``STATIC//k``, ``CODE//c``, ``LAB//k//BIN//b`` tokens."""
    fixed = list(INTERVAL_TOKENS) + ["GENDER//F", "GENDER//M"]
    fixed += [f"CODE//{i}" for i in range(n_codes)]
    fixed += [f"LAB//{i}//BIN//{b}" for i in range(8) for b in range(n_bins)]
    return Vocabulary.build(fixed)


def _interval_token(days: float) -> str:
    if days < 28:
        return f"[W{min(int(days // 7), 3)}]"
    months = int(days // 30)
    return f"[M{months}]" if months <= 12 else "[LT]"


def _subject(rng: np.random.Generator, vocab: Vocabulary, n_codes: int, max_len: int) -> dict[str, list[Any]]:
    ids: list[int] = []
    types: list[int] = []
    ages: list[float] = []
    times: list[float] = []
    orders: list[int] = []
    segs: list[int] = []
    values: list[float] = []
    birth = float(rng.uniform(-20000, 5000))  # days since 1970
    t = birth + float(rng.uniform(20, 80)) * 365.25

    def add(tok: str, typ: int, order: int, seg: int, value: float = float("nan")) -> None:
        values.append(value)
        ids.append(vocab.id(tok))
        types.append(typ)
        ages.append((t - birth) / 365.25)
        times.append(t)
        orders.append(order)
        segs.append(seg)

    add(CLS, TokenType.SPECIAL, 0, 0)
    add(str(rng.choice(["GENDER//F", "GENDER//M"])), TokenType.STATIC, 0, 0)
    # a subject has 1-2 conditions; each condition owns a block of codes
    conds = rng.choice(N_CONDITIONS, size=int(rng.integers(1, 3)), replace=False)
    block = n_codes // N_CONDITIONS
    n_visits = int(rng.integers(2, 12))
    for v in range(1, n_visits + 1):
        if v > 1:
            gap = float(rng.exponential(90))
            t += gap
            add(_interval_token(gap), TokenType.INTERVAL, v - 1, 0)
        seg = 1 if v % 2 else 2
        add(VS, TokenType.VISIT_START, v, seg)
        for _ in range(int(rng.integers(2, 9))):
            c = int(rng.choice(conds)) * block + int(rng.integers(0, block)) if rng.random() < 0.8 else int(
                rng.integers(0, n_codes))
            add(f"CODE//{c}", TokenType.CODE, v, seg)
            if c % 15 == 0:  # some codes are labs followed by their value bin
                b = int(rng.integers(0, 5))  # the scaled value lies inside its bin's share of [-0.5, 0.5)
                value = (b + float(rng.random())) / 5 - 0.5
                add(f"LAB//{(c // 15) % 8}//BIN//{b}", TokenType.VALUE_BIN, v, seg, value)
            t += float(rng.uniform(0, 0.5))
        add(VE, TokenType.VISIT_END, v, seg)
        add(REG, TokenType.REGISTER, v, seg)
        if len(ids) >= max_len:
            break
    return {"concept_ids": ids, "type_ids": types, "ages": ages, "times": times,
            "visit_orders": orders, "visit_segments": segs, "values": values}


def write_standin(out: str | Path, n_subjects: int = 200, seed: int = 0, n_codes: int = 120,
                  max_len: int = 256) -> Path:
    """Write ``<out>/vocab.json`` and ``<out>/pretrain/part-0.parquet``; returns ``out``. Splits are
    80/10/10 by subject id, deterministic."""
    out = Path(out)
    (out / "pretrain").mkdir(parents=True, exist_ok=True)
    vocab = standin_vocabulary(n_codes)
    vocab.save(out / "vocab.json")
    rng = np.random.default_rng(seed)
    rows: dict[str, list[Any]] = {f.name: [] for f in TOKENS_SCHEMA}
    for sid in range(n_subjects):
        seq = _subject(rng, vocab, n_codes, max_len)
        bucket = sid % 10
        rows["subject_id"].append(sid)
        rows["split"].append("train" if bucket < 8 else ("tuning" if bucket == 8 else "held_out"))
        rows["length"].append(len(seq["concept_ids"]))
        for k, v in seq.items():
            rows[k].append(v)
        for k in ("task", "prediction_time", "label", "duration_days", "event", "target_ids"):
            rows[k].append(None)
    pq.write_table(pa.Table.from_pydict(rows, schema=TOKENS_SCHEMA), out / "pretrain" / "part-0.parquet")
    return out
