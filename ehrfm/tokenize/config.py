"""Tokenizer configuration (a typed dataclass that round-trips through YAML/JSON dicts)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


@dataclass(frozen=True)
class TokenizeConfig:
    """How a patient timeline becomes a token stream.

    - ``max_len``: the longest row (tokens); longer rows keep the most recent visits (default 2048).
    - ``visit_gap_hours``: events without ``encounter_id`` that are not inside an encounter's time span
      form time-based visits; a new one starts after a gap longer than this. The same gap decides whether
      the last visit of a task row is still open at ``prediction_time`` when no end code was seen.
    - ``visit_end_patterns``: ``fnmatch`` patterns of codes that close a visit (an encounter's end).
    - ``static_prefixes``: code prefixes of demographic events hoisted to the static block at the start
      (events with a null time are always static). Timed ones are hoisted only when at or before the cut.
    """

    max_len: int = 2048
    visit_gap_hours: float = 24.0
    visit_end_patterns: tuple[str, ...] = ("ENCOUNTER//*//END", "HOSPITAL_DISCHARGE*")
    static_prefixes: tuple[str, ...] = ("GENDER//", "RACE//", "ETHNICITY//")

    def __post_init__(self) -> None:
        if self.max_len < 8:
            raise ValueError(f"max_len must be >= 8, got {self.max_len}")
        if self.visit_gap_hours < 0:
            raise ValueError(f"visit_gap_hours must be >= 0, got {self.visit_gap_hours}")

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (lists for tuples) for YAML/JSON."""
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TokenizeConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError`` naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown tokenizer config field(s): {unknown}; known: {sorted(known)}")
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kw)
