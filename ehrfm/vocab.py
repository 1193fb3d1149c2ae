"""The token vocabulary: fitted once by ``prepare`` (train split only), saved as JSON, loaded everywhere.

File format (``vocab.json``)::

    {"format": "ehrfm-vocab/1", "tokens": ["[PAD]", "[UNK]", ...], "counts": {...}}

Token ids are positions in ``tokens``; ids 0..6 are always the special tokens in
:data:`ehrfm.schema.SPECIAL_TOKENS` order, so ``[PAD]`` is 0 and ``[UNK]`` is 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ehrfm.schema import SPECIAL_TOKENS, UNK_ID

FORMAT = "ehrfm-vocab/1"


@dataclass
class Vocabulary:
    """Bidirectional token <-> id map. Build with :meth:`build`, persist with :meth:`save`/:meth:`load`."""

    tokens: list[str]
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if tuple(self.tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(f"vocabulary must start with the special tokens {SPECIAL_TOKENS}")
        self._index = {t: i for i, t in enumerate(self.tokens)}
        if len(self._index) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")

    @classmethod
    def build(cls, fixed: Iterable[str], counts: Mapping[str, int] | None = None) -> Vocabulary:
        """Special tokens, then ``fixed`` (interval, task, ...), then counted codes by count desc, name."""
        tokens = list(SPECIAL_TOKENS)
        seen = set(tokens)
        for t in fixed:
            if t not in seen:
                tokens.append(t)
                seen.add(t)
        counts = dict(counts or {})
        for t in sorted(counts, key=lambda c: (-counts[c], c)):
            if t not in seen:
                tokens.append(t)
                seen.add(t)
        return cls(tokens=tokens, counts=counts)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: object) -> bool:
        return token in self._index

    def id(self, token: str) -> int:
        """Id of ``token``; ``[UNK]`` for tokens outside the vocabulary."""
        return self._index.get(token, UNK_ID)

    def token(self, idx: int) -> str:
        """Token string of ``idx``."""
        return self.tokens[idx]

    def save(self, path: str | Path) -> None:
        """Write the JSON file (a local path, or a URI through :mod:`ehrfm.storage`)."""
        write_text(path, json.dumps({"format": FORMAT, "tokens": self.tokens, "counts": self.counts}))

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        """Read a file written by :meth:`save` (a local path or URI)."""
        data = json.loads(read_text(path))
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: not an ehrfm vocabulary (format={data.get('format')!r}, want "
                             f"{FORMAT!r})")
        return cls(tokens=list(data["tokens"]), counts=dict(data.get("counts", {})))


def write_text(path: str | Path, text: str) -> None:
    """Write a small text file: a local path as :meth:`Path.write_text` always did (the same bytes, no
    temporary file), a remote URI (``s3://``, ``hdfs://`` ...) through :func:`ehrfm.storage.write_text`."""
    from ehrfm import storage

    if storage.is_remote(str(path)):
        storage.write_text(str(path), text)
    else:
        Path(storage.local_path(str(path))).write_text(text)


def read_text(path: str | Path) -> str:
    """The text of a small file at a local path or URI (see :func:`write_text`)."""
    from ehrfm import storage

    if storage.is_remote(str(path)):
        return storage.read_text(str(path))
    return Path(storage.local_path(str(path))).read_text()
