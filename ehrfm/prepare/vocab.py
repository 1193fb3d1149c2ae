"""Code vocabulary counted on the TRAIN split only, plus the fixed tokens every model needs.

Token order in ``vocab.json`` (ids are positions, see :class:`ehrfm.vocab.Vocabulary`):

1. the special tokens (ids 0..6),
2. interval tokens ``[W0]..[W3] [M0]..[M12] [LT]``,
3. value-bin tokens ``[Q0]..[Q{n_bins-1}]`` (shared by all codes; a numeric value is *code token + bin
token*),
4. fixed demographic tokens (``GENDER//F``, ``GENDER//M``, ``GENDER//UNKNOWN``) so sex never becomes
``[UNK]``,
5. one prompt token per task (:func:`ehrfm.schema.task_token`), sorted by task name,
6. codes seen at least ``min_count`` times (events) on train, by count descending then name.

Codes below ``min_count`` — and any code never seen on train — map to the single ``[UNK]``.
``MEDS_BIRTH`` is never a token (it only defines the ``ages`` stream).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import yaml

from ehrfm.prepare.bins import bin_tokens
from ehrfm.schema import BIRTH_CODE, CODE, INTERVAL_TOKENS, SUBJECT_ID, TRAIN_SPLIT, task_token
from ehrfm.vocab import Vocabulary

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkDataFrame

FIXED_DEMOGRAPHIC_TOKENS = ("GENDER//F", "GENDER//M", "GENDER//UNKNOWN")
NOT_TOKENS = frozenset({BIRTH_CODE})


def task_names_from_dir(tasks_dir: str | Path) -> list[str]:
    """Task names of ``tasks_dir/*.yaml`` (the ``name`` key, else the file stem), sorted.

    Raises ``ValueError`` naming the file when a YAML file is not a mapping or has an empty name.
    """
    names = []
    for f in sorted(Path(tasks_dir).glob("*.y*ml")):
        data = yaml.safe_load(f.read_text())
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"{f}: a task file must be a YAML mapping, got {type(data).__name__}")
        name = str(data.get("name") or f.stem).strip()
        if not name:
            raise ValueError(f"{f}: field 'name' is empty")
        names.append(name)
    return sorted(set(names))


def fixed_tokens(n_bins: int, tasks: Iterable[str]) -> list[str]:
    """Every non-counted token after the specials, in vocabulary order (see module docstring)."""
    return [
        *INTERVAL_TOKENS,
        *bin_tokens(n_bins),
        *FIXED_DEMOGRAPHIC_TOKENS,
        *[task_token(t) for t in sorted(set(tasks))],
    ]


def count_codes_pandas(events: pd.DataFrame, splits: pd.DataFrame) -> dict[str, int]:
    """Event count per code on the train split (one process). ``splits``: ``subject_id``, ``split``."""
    train_ids = splits.loc[splits["split"] == TRAIN_SPLIT, SUBJECT_ID]
    codes = events.loc[events[SUBJECT_ID].isin(train_ids), CODE]
    counts = codes.value_counts()
    return {str(c): int(n) for c, n in counts.items() if c not in NOT_TOKENS}


def count_codes_spark(events: SparkDataFrame, splits: SparkDataFrame) -> dict[str, int]:
    """Event count per code on the train split with Spark (only the per-code counts reach the driver)."""
    from pyspark.sql import functions as F

    train = splits.where(F.col("split") == TRAIN_SPLIT).select(SUBJECT_ID)
    rows = events.join(train, on=SUBJECT_ID, how="left_semi").groupBy(CODE).count().collect()
    return {str(r[CODE]): int(r["count"]) for r in rows if r[CODE] not in NOT_TOKENS}


def build_vocab(counts: dict[str, int], *, min_count: int, n_bins: int, tasks: Iterable[str]) -> Vocabulary:
    """The vocabulary from train code counts: fixed tokens first, then codes with ``count >= min_count``.

    ``Vocabulary.counts`` keeps the train counts of every kept code (fixed tokens count too when seen).
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    # sorted so vocab.json is byte-identical whichever engine counted (dict order is written out)
    kept = {c: counts[c] for c in sorted(counts, key=lambda c: (-counts[c], c)) if counts[c] >= min_count}
    return Vocabulary.build(fixed_tokens(n_bins, tasks), kept)
