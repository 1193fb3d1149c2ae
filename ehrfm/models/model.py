"""The EHR foundation model: EHRMamba embeddings -> n pre-norm residual blocks (Mamba-1, Mamba-2,
Mamba-3 or transformer) -> final RMSNorm -> LM head tied to the concept embedding.

Forward returns hidden states (b, l, d) and next-token logits (b, l, V). Recurrent inference:
``cache = model.allocate_inference_cache(b)`` then ``model.step(tokens_t, cache)`` once per token, O(1)
per token for the Mamba backbones and O(t) with a KV cache for the transformer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn

from ehrfm.config.base import ConfigError
from ehrfm.config.model import ModelConfig
from ehrfm.models.embeddings import EHRMambaEmbeddings
from ehrfm.models.layers import RMSNorm
from ehrfm.models.mamba import MambaMixer
from ehrfm.models.mamba2 import Mamba2Mixer
from ehrfm.models.mamba3 import Mamba3Mixer
from ehrfm.models.transformer import MLP, CausalSelfAttention
from ehrfm.schema import TOKEN_STREAMS

STREAMS = TOKEN_STREAMS
WEIGHTS_FILE = "model.pt"
CONFIG_FILE = "config.yaml"


@dataclass
class ModelOutput:
    """``hidden`` (b, l, d) after the final norm; ``logits`` (b, l, V) or None when not requested."""

    hidden: Tensor
    logits: Tensor | None


@dataclass
class InferenceCache:
    """Recurrent state of every layer for ``batch`` sequences, advanced by :meth:`EHRFoundationModel.step`."""

    layers: list[Any]
    batch: int
    seen: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # per-row tensors (b, ...): prev_times, code tables


def _mixer(cfg: ModelConfig) -> nn.Module:
    if cfg.backbone == "mamba":
        return MambaMixer(cfg)
    if cfg.backbone == "mamba2":
        return Mamba2Mixer(cfg)
    if cfg.backbone == "mamba3":
        return Mamba3Mixer(cfg)
    return CausalSelfAttention(cfg)


class Block(nn.Module):
    """``h + drop(mixer(norm(h)))`` and, for the transformer, ``h + mlp(norm(h))``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer: Any = _mixer(cfg)
        self.dropout = nn.Dropout(cfg.dropout)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps) if cfg.backbone == "transformer" else None
        self.mlp = MLP(cfg) if cfg.backbone == "transformer" else None

    def _mlp(self, h: Tensor) -> Tensor:
        if self.mlp is None or self.mlp_norm is None:
            return h
        return cast(Tensor, h + self.mlp(self.mlp_norm(h)))

    def forward(self, h: Tensor) -> Tensor:
        """h (b, l, d) -> (b, l, d)."""
        return self._mlp(h + self.dropout(self.mixer(self.norm(h))))

    def step(self, h: Tensor, state: Any) -> Tensor:
        """One token h (b, d) -> (b, d); updates ``state`` in place."""
        return self._mlp(h + self.mixer.step(self.norm(h), state))


class QueryHead(nn.Module):
    """Answer head of query-conditioned pretraining (docs/query.md): P(any of the query's codes occurs in
    (cut, cut + horizon]) from the backbone's state at the cut.

    The query is a start vector, the target codes (their concept embeddings, shared with the backbone's input
    and LM head, so a code never used as a query target still has a meaning) and a horizon bucket. It reads
    only the cut's hidden state, which a causal backbone computes from tokens up to the cut: no leakage by
    construction, and one forward serves every cut and query of a row."""

    horizons_days: Tensor

    def __init__(self, d_model: int, horizons_days: list[float]) -> None:
        super().__init__()
        self.register_buffer("horizons_days", torch.tensor(horizons_days, dtype=torch.float32))
        self.start = nn.Parameter(torch.zeros(d_model))
        self.horizon = nn.Embedding(len(horizons_days), d_model)
        self.codes = nn.Linear(d_model, d_model)
        self.set_size = nn.Parameter(torch.zeros(d_model))  # times log(#codes): disjunctions of more codes
        self.mlp = nn.Sequential(nn.Linear(3 * d_model, d_model), nn.GELU(), nn.Linear(d_model, 1))

    def forward(self, state: Tensor, code_emb: Tensor, code_mask: Tensor, horizon_idx: Tensor) -> Tensor:
        """state (n, d), code_emb (n, k, d), code_mask (n, k) bool, horizon_idx (n,) -> logits (n,)."""
        m = code_mask.to(code_emb.dtype).unsqueeze(-1)
        k = m.sum(1).clamp(min=1.0)
        q = (self.start + self.codes((code_emb * m).sum(1) / k) + torch.log(k) * self.set_size
             + self.horizon(horizon_idx))
        return cast(Tensor, self.mlp(torch.cat([state, q, state * q], dim=-1)).squeeze(-1))


class EHRFoundationModel(nn.Module):
    """Embeddings + backbone + tied LM head, built from a :class:`ModelConfig`."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if cfg.vocab_size < 1:
            raise ConfigError("model.vocab_size=0: not resolved; it comes from the vocabulary file "
                              "(ModelConfig.resolve or ehrfm.models.from_vocab)")
        if cfg.backbone == "transformer" and cfg.max_len < 1:
            raise ConfigError("model.max_len=0: the transformer needs its length (RoPE table, KV cache); "
                              "set it or resolve it from the tokens (ModelConfig.resolve)")
        self.config = cfg
        self.embeddings = EHRMambaEmbeddings(cfg)
        self.layers = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embeddings.concept.weight  # one matrix: input and output codes
        self.query_head: QueryHead | None = None  # query-conditioned pretraining only (attach_query_head)

    def attach_query_head(self, horizons_days: list[float]) -> QueryHead:
        """Add the :class:`QueryHead` (its weights then travel in the state dict; forward is unchanged)."""
        head = QueryHead(self.config.d_model, list(horizons_days))
        nn.init.normal_(head.horizon.weight, std=self.config.initializer_range)
        self.query_head = head.to(self.lm_head.weight.device)
        return head

    def query_logits(self, state: Tensor, targets: Tensor, horizon_idx: Tensor) -> Tensor:
        """Logits of queries: state (n, d) at each cut, targets (n, k) code ids padded with ``pad_id``,
        horizon_idx (n,) bucket indices -> (n,)."""
        if self.query_head is None:
            raise ValueError("query_logits(): this model has no query head (pretrain with query.weight > 0)")
        return cast(Tensor, self.query_head(state, self.embeddings.concept(targets),
                                            targets != self.config.pad_id, horizon_idx))

    def _init_weights(self, module: nn.Module) -> None:
        # Only embeddings get N(0, initializer_range): linear/conv layers keep PyTorch's default init and
        # the Mamba dt/A/D initialisations set inside the mixers must not be overwritten.
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=self.config.initializer_range)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def forward(
        self,
        concept_ids: Tensor,
        type_ids: Tensor | None = None,
        ages: Tensor | None = None,
        times: Tensor | None = None,
        visit_orders: Tensor | None = None,
        visit_segments: Tensor | None = None,
        values: Tensor | None = None,
        return_logits: bool = True,
    ) -> ModelOutput:
        """Streams (b, l) -> :class:`ModelOutput` with hidden (b, l, d) and logits (b, l, V)."""
        h = self.embeddings(concept_ids, type_ids, ages, times, visit_orders, visit_segments, values)
        for layer in self.layers:
            h = layer(h)
        h = self.norm_f(h)
        return ModelOutput(hidden=h, logits=self.lm_head(h) if return_logits else None)

    def allocate_inference_cache(self, batch: int, dtype: torch.dtype | None = None) -> InferenceCache:
        """Zero recurrent state (Mamba) or empty KV cache (transformer) for ``batch`` sequences."""
        param = next(self.parameters())
        dtype = dtype or param.dtype
        states = [layer.mixer.allocate_state(batch, param.device, dtype) for layer in self.blocks]
        return InferenceCache(layers=states, batch=batch)

    def step(self, tokens: dict[str, Tensor], cache: InferenceCache) -> ModelOutput:
        """Advance every sequence by one token. ``tokens`` maps stream names to (b,) tensors (missing
        streams count as zeros); returns hidden (b, d) and logits (b, V) for that position."""
        unknown = set(tokens) - set(STREAMS)
        if unknown:
            raise ValueError(f"step(): unknown stream(s) {sorted(unknown)}; expected {STREAMS}")
        if tokens["concept_ids"].shape[0] != cache.batch:
            raise ValueError(f"step(): batch {tokens['concept_ids'].shape[0]} != cache batch {cache.batch}")
        h = self.embeddings(**tokens, prev_times=cache.extra.get("prev_times"), step_state=cache.extra)
        if "times" in tokens:
            cache.extra["prev_times"] = tokens["times"].detach().float().clone()
        for layer, state in zip(self.blocks, cache.layers, strict=True):
            h = layer.step(h, state)
        cache.seen += 1
        h = self.norm_f(h)
        return ModelOutput(hidden=h, logits=self.lm_head(h))

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.yaml`` and ``model.pt`` (state dict) into ``directory``; returns it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save(directory / CONFIG_FILE)
        torch.save(self.state_dict(), directory / WEIGHTS_FILE)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path,
                        map_location: str | torch.device = "cpu") -> EHRFoundationModel:
        """Rebuild from a folder written by :meth:`save_pretrained`."""
        directory = Path(directory)
        model = cls(ModelConfig.load(directory / CONFIG_FILE))
        state = torch.load(directory / WEIGHTS_FILE, map_location=map_location, weights_only=True)
        if "query_head.horizons_days" in state:  # pretrained with the query objective
            model.attach_query_head(state["query_head.horizons_days"].tolist())
        model.load_state_dict(state)
        return model

    @property
    def blocks(self) -> list[Block]:
        """The residual blocks, typed (``self.layers`` is the registered ModuleList)."""
        return [layer for layer in self.layers if isinstance(layer, Block)]

    def num_parameters(self) -> int:
        """Trainable parameter count (tied matrices counted once)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def pool(hidden: Tensor, lengths: Tensor) -> Tensor:
    """State of the last real token: hidden (b, l, d), lengths (b,) -> (b, d). Right padding assumed."""
    if int(lengths.min()) < 1 or int(lengths.max()) > hidden.shape[1]:
        raise ValueError(f"pool(): lengths must be in [1, {hidden.shape[1]}], got {lengths.tolist()}")
    idx = (lengths.long() - 1).to(hidden.device)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def describe(model: EHRFoundationModel) -> str:
    """One-line summary: backbone, layers, width, parameter count."""
    cfg = model.config
    return json.dumps({"backbone": cfg.backbone, "n_layers": cfg.n_layers, "d_model": cfg.d_model,
                       "vocab_size": cfg.vocab_size, "parameters": model.num_parameters()})
