"""EHRMamba input embeddings.

Each token is the sum of (Fallahpour et al., 2024, "EHRMamba"):
concept + token type + visit order + visit segment embeddings, plus age and absolute time, which are
continuous and enter through Time2Vec features (one linear + periodic sinusoids with learned frequencies)
projected to ``d_model``. Beyond EHRMamba, a third Time2Vec reads the gap to the previous token (derived from
the time stream, causal; ``ModelConfig.use_time_gap``) so durations are visible, and a fourth reads the exact
numeric value a value-bin token carries (the ``values`` stream, scaled per code by the train bins; NaN = none,
adds nothing; ``ModelConfig.use_values``) so trends finer than a quantile bin are visible. Two optional
per-row inputs (on in the presets) carry what a small recurrent state finds hard to accumulate itself:

* ``use_code_counts``: an embedding of how many times the token's concept has occurred so far in the row
  (itself included, saturating at ``max_code_count``): "third admission", "diabetes coded again";
* ``use_value_deltas``: a Time2Vec on the change of a value since the same code's previous value in the row
  (the lab "delta check"; NaN = first value or no value, adds nothing), so a rising creatinine is one input,
  not a comparison across dozens of interleaved tokens.

Both are causal (they read only earlier tokens of the row) and are computed here from ``concept_ids`` and
``values``: (b, l) in one pass by a stable per-row sort (O(l log l), no (l, l) matrix), or one recurrent step
at a time from running per-code tables (:func:`step_code_features`); the tests check the two agree. The sum
goes through LayerNorm then dropout.

Positions: the Mamba backbones are recurrent and need no position embedding (order is implicit in the
scan); the transformer gets positions from RoPE inside attention. Neither adds a learned position table
here, so the same embedding module serves every backbone.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from ehrfm.models.config import ModelConfig

# Continuous inputs are centred and scaled to O(1) before Time2Vec: raw ages (~70) and calendar years
# made the linear Time2Vec term ~50x larger than a concept embedding (N(0, 0.02)), so after the LayerNorm
# every token looked like "an age" and concept identity was a ~1% perturbation — finetuned heads then
# ranked patients by age. Ages: (years - 60) / 20; absolute time: decades from 2020.
_AGE_CENTER, _AGE_SCALE = 60.0, 20.0
_TIME_ORIGIN_DAYS = 18262.0  # 2020-01-01 (days since 1970)
_DAYS_PER_DECADE = 3652.5
# Gap to the previous token: log1p(days) / 4 (0 within a panel, ~0.27 for two days, ~1.5 for a year).
# Absolute time in decades cannot resolve a 5-day stay (0.0014); the gap stream makes durations — length of
# stay, time since the last admission — visible to a causal model without looking ahead.
_GAP_SCALE = 4.0


class Time2Vec(nn.Module):
    """Time2Vec (Kazemi et al., 2019): ``[w0*t + b0, sin(w*t + b)]`` projected to ``d_model``."""

    def __init__(self, d_model: int, n_features: int = 16, init_std: float = 0.02) -> None:
        super().__init__()
        self.linear = nn.Linear(1, 1)
        self.periodic = nn.Linear(1, n_features - 1)
        self.proj = nn.Linear(n_features, d_model)
        with torch.no_grad():  # start at the scale of the concept embeddings, not ~50x above it
            nn.init.normal_(self.proj.weight, std=init_std)
            self.proj.bias.zero_()

    def forward(self, t: Tensor) -> Tensor:
        """t (...) float -> (..., d_model)."""
        t = t.unsqueeze(-1).float()
        feats = torch.cat([self.linear(t), torch.sin(self.periodic(t))], dim=-1)
        return cast(Tensor, self.proj(feats.to(self.proj.weight.dtype)))


def time_gaps(times: Tensor, prev_times: Tensor | None = None) -> Tensor:
    """Days since the previous token, >= 0: times (b, l) -> (b, l) with 0 at the first position; or one step
    times (b,) with ``prev_times`` (b,) (None: 0). Right padding (time 0) after real tokens clamps to 0."""
    t = times.float()
    if t.dim() >= 2:
        prev = torch.cat([t[..., :1], t[..., :-1]], dim=-1)
    else:
        prev = t if prev_times is None else prev_times.float()
    return (t - prev).clamp(min=0.0)


def _where_present(t2v: Time2Vec, v: Tensor, dtype: torch.dtype) -> Tensor:
    """``t2v(v)`` (..., d_model) where ``v`` is finite, zero where it is NaN (no value: no term)."""
    has = torch.isfinite(v)
    return cast(Tensor, t2v(torch.where(has, v, torch.zeros_like(v))) * has.unsqueeze(-1).to(dtype))


def _sorted_groups(keys: Tensor) -> tuple[Tensor, Tensor]:
    """Stable per-row sort of ``keys`` (b, l): returns the permutation (b, l) and, in sorted order, whether
    each element starts a new group of equal keys (b, l). Stability keeps equal keys in time order."""
    sorted_keys, perm = torch.sort(keys, dim=-1, stable=True)
    first = torch.ones_like(sorted_keys, dtype=torch.bool)
    first[:, 1:] = sorted_keys[:, 1:] != sorted_keys[:, :-1]
    return perm, first


def code_occurrences(concept_ids: Tensor) -> Tensor:
    """How many times each token's concept has occurred so far in its row, itself included: (b, l) -> (b, l)
    int64 >= 1. Example: concepts [5, 7, 5, 5] -> [1, 1, 2, 3]."""
    c = concept_ids.long()
    perm, first = _sorted_groups(c)
    pos = torch.arange(c.shape[-1], device=c.device).expand_as(c)
    start = torch.cummax(torch.where(first, pos, torch.zeros_like(pos)), dim=-1).values  # group start, sorted
    return torch.empty_like(c).scatter_(1, perm, pos - start + 1)


def value_deltas(concept_ids: Tensor, values: Tensor) -> Tensor:
    """Change of each value since the same code's previous value in the row: (b, l) -> (b, l) float, NaN where
    the token carries no value or its code has no earlier value. A value sits on the bin token right after
    its code token, so the code of position i is ``concept_ids[i - 1]``."""
    v = values.float()
    has = torch.isfinite(v)
    code = torch.cat([torch.full_like(concept_ids[:, :1], -1), concept_ids[:, :-1]], dim=-1).long()
    # value-less tokens all share one key that no code uses; their deltas are masked out below
    keys = torch.where(has, code, torch.full_like(code, -2))
    perm, first = _sorted_groups(keys)
    sv = v.gather(1, perm)
    delta = torch.full_like(sv, float("nan"))
    delta[:, 1:] = torch.where(first[:, 1:], torch.full_like(sv[:, 1:], float("nan")), sv[:, 1:] - sv[:, :-1])
    out = torch.empty_like(delta).scatter_(1, perm, delta)
    return torch.where(has, out, torch.full_like(out, float("nan")))


def step_code_features(concept_ids: Tensor, values: Tensor | None, state: dict[str, Tensor],
                       vocab_size: int) -> tuple[Tensor, Tensor]:
    """One recurrent step of :func:`code_occurrences` and :func:`value_deltas`: concept_ids (b,), values (b,)
    or None -> (occurrences (b,), deltas (b,)). ``state`` holds the running tables ``code_counts`` (b, V),
    ``last_values`` (b, V) and ``prev_concept`` (b,); missing entries start empty and are updated in place."""
    b = concept_ids.shape[0]
    c = concept_ids.long()
    rows = torch.arange(b, device=c.device)
    counts = state.setdefault("code_counts", torch.zeros(b, vocab_size, dtype=torch.long, device=c.device))
    last = state.setdefault("last_values", torch.full((b, vocab_size), float("nan"), device=c.device))
    prev = state.get("prev_concept")
    counts[rows, c] += 1
    occ = counts[rows, c].clone()
    v = values.float() if values is not None else torch.full((b,), float("nan"), device=c.device)
    delta = torch.full_like(v, float("nan"))
    if prev is not None:  # a value sits on the token after its code: none on a row's first token
        has = torch.isfinite(v)
        code = prev.long()
        delta = torch.where(has, v - last[rows, code], delta)
        last[rows[has], code[has]] = v[has]
    state["prev_concept"] = c.clone()
    return occ, delta


class EHRMambaEmbeddings(nn.Module):
    """Token streams -> input vectors (b, l, d_model)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.concept = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_id)
        self.token_type = nn.Embedding(cfg.type_vocab_size, d)
        self.visit_order = nn.Embedding(cfg.max_visit_orders, d)
        self.visit_segment = nn.Embedding(cfg.visit_segment_size, d)
        self.age = Time2Vec(d, init_std=cfg.initializer_range) if cfg.use_age else None
        self.time = Time2Vec(d, init_std=cfg.initializer_range) if cfg.use_time else None
        self.gap = Time2Vec(d, init_std=cfg.initializer_range) if cfg.use_time_gap else None
        self.value = Time2Vec(d, init_std=cfg.initializer_range) if cfg.use_values else None
        self.count = nn.Embedding(cfg.max_code_count + 1, d) if cfg.use_code_counts else None
        self.delta = Time2Vec(d, init_std=cfg.initializer_range) if cfg.use_value_deltas else None
        self.norm = nn.LayerNorm(d, eps=cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        concept_ids: Tensor,
        type_ids: Tensor | None = None,
        ages: Tensor | None = None,
        times: Tensor | None = None,
        visit_orders: Tensor | None = None,
        visit_segments: Tensor | None = None,
        values: Tensor | None = None,
        prev_times: Tensor | None = None,
        step_state: dict[str, Tensor] | None = None,
    ) -> Tensor:
        """All streams have the same shape (b, l) (or (b,) for one recurrent step); missing streams count
        as zeros (``values``: as NaN, i.e. no value). For one recurrent step, ``prev_times`` (b,) is the time
        of each row's previous token (None: the first token, gap 0) and ``step_state`` the running per-code
        tables of :func:`step_code_features` (required when counts or deltas are on). Returns
        (..., d_model)."""
        cfg = self.cfg
        if int(concept_ids.max()) >= cfg.vocab_size or int(concept_ids.min()) < 0:
            raise ValueError(f"concept_ids outside [0, vocab_size={cfg.vocab_size}): check the vocabulary "
                             "file")
        x = self.concept(concept_ids)
        if type_ids is not None:
            x = x + self.token_type(type_ids.long().clamp(0, cfg.type_vocab_size - 1))
        if visit_orders is not None:
            x = x + self.visit_order(visit_orders.long().clamp(0, cfg.max_visit_orders - 1))
        if visit_segments is not None:
            x = x + self.visit_segment(visit_segments.long().clamp(0, cfg.visit_segment_size - 1))
        if self.age is not None and ages is not None:
            x = x + self.age((ages.float() - _AGE_CENTER) / _AGE_SCALE)
        if self.time is not None and times is not None:
            x = x + self.time((times.float() - _TIME_ORIGIN_DAYS) / _DAYS_PER_DECADE)
        if self.gap is not None and times is not None:
            x = x + self.gap(torch.log1p(time_gaps(times, prev_times)) / _GAP_SCALE)
        if self.value is not None and values is not None:
            x = x + _where_present(self.value, values.float(), x.dtype)
        if self.count is not None or self.delta is not None:
            occ, delta = self._code_features(concept_ids, values, step_state)
            if self.count is not None and occ is not None:
                x = x + self.count(occ.clamp(max=cfg.max_code_count))
            if self.delta is not None and delta is not None:
                x = x + _where_present(self.delta, delta, x.dtype)
        return cast(Tensor, self.dropout(self.norm(x)))

    def _code_features(self, concept_ids: Tensor, values: Tensor | None, step_state: dict[str, Tensor] | None
                       ) -> tuple[Tensor | None, Tensor | None]:
        """Occurrence counts and value deltas, each (b, l) or (b,); a full forward computes only the enabled
        ones (None otherwise; no deltas without values), a recurrent step always both, to keep its tables
        whole."""
        if concept_ids.dim() == 1:
            if step_state is None:
                raise ValueError("one recurrent step with code counts/value deltas needs step_state "
                                 "(the cache)")
            return step_code_features(concept_ids, values, step_state, self.cfg.vocab_size)
        occ = code_occurrences(concept_ids) if self.count is not None else None
        delta = value_deltas(concept_ids, values) if self.delta is not None and values is not None else None
        return occ, delta
