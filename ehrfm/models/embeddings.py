"""EHRMamba input embeddings.

Each token is the sum of (Fallahpour et al., 2024, "EHRMamba"):
concept + token type + visit order + visit segment embeddings, plus age and absolute time, which are
continuous and enter through Time2Vec features (one linear + periodic sinusoids with learned frequencies)
projected to ``d_model``. Beyond EHRMamba, a third Time2Vec reads the gap to the previous token (derived from
the time stream, causal; ``ModelConfig.use_time_gap``) so durations are visible, and a fourth reads the exact
numeric value a value-bin token carries (the ``values`` stream, scaled per code by the train bins; NaN = none,
adds nothing; ``ModelConfig.use_values``) so trends finer than a quantile bin are visible. The sum goes
through LayerNorm then dropout.

Positions: the Mamba backbones are recurrent and need no position embedding (order is implicit in the
scan); the transformer gets positions from RoPE inside attention. Neither adds a learned position table
here, so the same embedding module serves every backbone.
"""

from __future__ import annotations

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
# Gap to the previous token: log1p(days) / 4 (0 within a panel, ~0.27 for two days, ~1.5 for a year). Absolute
# time in decades cannot resolve a 5-day stay (0.0014); the gap stream makes durations — length of stay, time
# since the last admission — visible to a causal model without looking ahead.
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
        return self.proj(feats.to(self.proj.weight.dtype))


def time_gaps(times: Tensor, prev_times: Tensor | None = None) -> Tensor:
    """Days since the previous token, >= 0: times (b, l) -> (b, l) with 0 at the first position; or one step
    times (b,) with ``prev_times`` (b,) (None: 0). Right padding (time 0) after real tokens clamps to 0."""
    t = times.float()
    if t.dim() >= 2:
        prev = torch.cat([t[..., :1], t[..., :-1]], dim=-1)
    else:
        prev = t if prev_times is None else prev_times.float()
    return (t - prev).clamp(min=0.0)


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
    ) -> Tensor:
        """All streams have the same shape (b, l) (or (b,) for one recurrent step); missing streams count
        as zeros (``values``: as NaN, i.e. no value). ``prev_times`` (b,): for one recurrent step, the time of each row's previous token (None:
        the first token, gap 0). Returns (..., d_model)."""
        cfg = self.cfg
        if int(concept_ids.max()) >= cfg.vocab_size or int(concept_ids.min()) < 0:
            raise ValueError(f"concept_ids outside [0, vocab_size={cfg.vocab_size}): check the vocabulary file")
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
            v = values.float()
            has = torch.isfinite(v)  # NaN: the token carries no value and gets no value term
            x = x + self.value(torch.where(has, v, torch.zeros_like(v))) * has.unsqueeze(-1).to(x.dtype)
        return self.dropout(self.norm(x))
