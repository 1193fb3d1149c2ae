"""Collation: right padding to a multiple of 8 (tensor-core friendly), truncation keeping the most
recent tokens (the end of a timeline is what predictions are made from)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ehrfm.data.dataset import LABEL_COLUMNS, LIST_COLUMNS, OPTIONAL_STREAMS
from ehrfm.schema import PAD_ID

_DTYPES = {"concept_ids": torch.long, "type_ids": torch.long, "ages": torch.float32, "times": torch.float32,
           "visit_orders": torch.long, "visit_segments": torch.long, "values": torch.float32}
_FLOATS = ("ages", "times", "values")


def padded_length(length: int, multiple: int = 8, max_len: int | None = None) -> int:
    """``length`` capped at ``max_len`` and rounded up to ``multiple``."""
    if max_len is not None:
        length = min(length, max_len)
    return max(multiple, math.ceil(length / multiple) * multiple)


class Collator:
    """Callable for ``DataLoader(collate_fn=...)``: list of dataset items -> dict of tensors.

    Output: the seven streams (b, L) with L = longest kept length rounded up to ``pad_to_multiple``
    (concept ids padded with ``pad_id``, values with NaN = no value, other streams with 0), ``lengths``
    (b,), ``subject_id`` (b,),
    and for task rows ``label``/``duration_days`` (b,) float (NaN when null) and ``event`` (b,) long (-1).
    """

    def __init__(self, max_len: int | None = None, pad_to_multiple: int = 8, pad_id: int = PAD_ID) -> None:
        if max_len is not None and max_len < 1:
            raise ValueError(f"Collator.max_len must be >= 1, got {max_len}")
        self.max_len, self.multiple, self.pad_id = max_len, pad_to_multiple, pad_id

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        """Collate ``items`` (dicts from :class:`TokenStreamDataset`)."""
        kept = [min(int(it["length"]), self.max_len or int(it["length"])) for it in items]
        width = padded_length(max(kept), self.multiple)
        out: dict[str, Tensor] = {}
        for name in LIST_COLUMNS:
            fill = self.pad_id if name == "concept_ids" else (np.nan if name == "values" else 0)
            arr = np.full((len(items), width), fill, dtype=np.float32 if name in _FLOATS else np.int64)
            for row, (it, n) in enumerate(zip(items, kept, strict=True)):
                if n and (name in it or name not in OPTIONAL_STREAMS):  # an absent optional stream stays fill
                    arr[row, :n] = it[name][-n:]  # most recent n tokens
            out[name] = torch.from_numpy(arr).to(_DTYPES[name])
        out["lengths"] = torch.tensor(kept, dtype=torch.long)
        out["subject_id"] = torch.tensor([int(it["subject_id"]) for it in items], dtype=torch.long)
        if all(c in items[0] for c in LABEL_COLUMNS):
            for c in ("label", "duration_days"):
                out[c] = torch.tensor([np.nan if it[c] is None else float(it[c]) for it in items])
            out["event"] = torch.tensor([-1 if it["event"] is None else int(it["event"]) for it in items])
        return out
