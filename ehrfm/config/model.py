"""Typed model configuration (:class:`ModelConfig`): shapes, not training settings; saved beside the weights.

Presets are YAML files in ``ehrfm/presets/model/<name>.yaml`` (read with
``ModelConfig.load(ehrfm.resources.preset_path("model", name))``). Two fields are never in a preset because
the data decides them: ``vocab_size`` (0 = the size of the vocabulary file, which is never refitted) and
``max_len`` (0 = the ``max_len`` the token rows were cut at, recorded in ``tokens/tokenize.json``). Training
fills both with :meth:`ModelConfig.resolve` and saves the resolved config beside the weights.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import Literal

from ehrfm.config.base import ConfigBase, ConfigError, require

Backbone = Literal["mamba", "mamba2", "mamba3", "transformer"]
BACKBONES: tuple[str, ...] = typing.get_args(Backbone)

PAD_ID = 0
"""Token id of [PAD] (``ehrfm.schema.PAD_ID``; this module must not import the pyarrow schema)."""
TOKEN_TYPES = 10
"""Number of token types (``ehrfm.schema.TokenType.COUNT``)."""

def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_POSITIVE = ("d_model", "n_layers", "type_vocab_size", "max_visit_orders", "visit_segment_size", "d_state",
             "d_conv", "expand", "headdim", "chunk_size", "cpu_chunk_size", "ngroups", "n_heads", "mlp_ratio",
             "max_code_count", "mimo_rank")


@dataclass
class ModelConfig(ConfigBase):
    """Everything needed to rebuild a model (shapes, not training settings).

    Fields shared by all backbones come first; ``d_state/d_conv/expand/dt_rank`` are Mamba's,
    ``headdim/chunk_size/ngroups`` Mamba-2's, ``n_heads/mlp_ratio`` the transformer's.
    """

    vocab_size: int = 0
    """Number of tokens; 0 = from the vocabulary file (training resolves it; never set it in a preset)."""
    backbone: Backbone = "mamba"
    """Sequence mixer: mamba (Mamba-1, EHRMamba), mamba2 (chunked SSD), mamba3 (trapezoidal, rotary/complex
    state, optional MIMO) or transformer (RoPE attention)."""
    d_model: int = 64
    """Hidden width."""
    n_layers: int = 2
    """Number of blocks."""
    dropout: float = 0.1
    """Dropout on embeddings and block outputs, in [0, 1)."""
    max_len: int = 0
    """Longest sequence the model takes (the transformer's RoPE / KV-cache size); 0 = the max_len the token
    rows were cut at (tokens/tokenize.json). A value below that is refused; a larger one is kept."""
    type_vocab_size: int = TOKEN_TYPES
    """Rows of the token-type embedding (at least the number of token types)."""
    max_visit_orders: int = 512
    """Rows of the visit-order embedding; visit orders beyond this share the last row."""
    visit_segment_size: int = 3
    """Rows of the visit-segment embedding (0 outside visits, 1/2 alternating)."""
    pad_id: int = PAD_ID
    """Token id of [PAD]."""
    tie_embeddings: bool = True
    """Tie the LM head to the concept embedding."""
    use_age: bool = True
    """A Time2Vec embedding of the age at each token."""
    use_time: bool = True
    """A Time2Vec embedding of the absolute time of each token."""
    use_time_gap: bool = True
    """A Time2Vec embedding of log1p(days since the previous token)."""
    use_values: bool = True
    """A Time2Vec embedding of the exact (scaled) numeric value carried by value-bin tokens."""
    use_code_counts: bool = False
    """An embedding of how often the token's concept has occurred so far in the row (off by default so configs
    saved before this input existed rebuild the same model; the presets turn it on)."""
    max_code_count: int = 16
    """Occurrence counts above this share the last row of the count embedding."""
    use_value_deltas: bool = False
    """A Time2Vec embedding of the change from the same code's previous value in the row (off by default, as
    use_code_counts)."""
    norm_eps: float = 1e-5
    """Epsilon of the RMS norms."""
    initializer_range: float = 0.02
    """Standard deviation of the normal weight initialisation."""
    d_state: int = 16
    """Mamba-1 / Mamba-2: SSM state size."""
    d_conv: int = 4
    """Mamba-1 / Mamba-2: width of the causal depthwise convolution."""
    expand: int = 2
    """Mamba-1 / Mamba-2: inner width = expand * d_model."""
    dt_rank: int = 0
    """Mamba-1: low-rank width of the dt projection; 0 = ceil(d_model / 16) as in Mamba."""
    headdim: int = 32
    """Mamba-2: width of one SSM head (must divide expand * d_model)."""
    chunk_size: int = 64
    """Mamba-2 / Mamba-3: chunk length of the scan on CUDA (the kernels', and the PyTorch path's on a GPU)."""
    cpu_chunk_size: int = 32
    """Mamba-2 / Mamba-3: chunk length of the chunked PyTorch scan on the CPU. The chunk only regroups the
    same sums (outputs and gradients equal to rounding), so it is a speed setting, not a shape. On the 2-core
    dev VM (d_model 64, 4 layers, 8k-token fwd+bwd steps, one thread; ``bench/results/backbones_cpu_chunk*
    .json``) 32 against 64 takes 0.83-0.93x the time for Mamba-2 and 0.77-0.88x for Mamba-3 at headdim 16
    (the tiny preset's), 0.77-1.04x at headdim 32, over L = 512-8,192; 16 is slower at 8,192."""
    ngroups: int = 1
    """Mamba-2: groups sharing B/C (must divide the number of heads)."""
    mimo_rank: int = 1
    """Mamba-3: MIMO rank (1 = SISO; mamba-ssm's MIMO default is 4)."""
    rope_fraction: float = 0.5
    """Mamba-3: share of the state rotated by the data-dependent angles, 0.5 or 1.0 (as mamba-ssm)."""
    n_heads: int = 4
    """Transformer: attention heads (d_model / n_heads must be even)."""
    mlp_ratio: int = 4
    """Transformer: MLP width = mlp_ratio * d_model."""

    def __post_init__(self) -> None:
        require(self.backbone in BACKBONES, "model.backbone", self.backbone,
                f"must be one of {list(BACKBONES)}")
        for name in _POSITIVE:
            value = getattr(self, name)
            require(_is_int(value) and value >= 1, f"model.{name}", value, "must be a positive integer")
        for name in ("vocab_size", "max_len"):
            value = getattr(self, name)
            require(_is_int(value) and value >= 0, f"model.{name}", value,
                    "must be an integer >= 0 (0 = from the data)")
        require(_is_int(self.dt_rank) and self.dt_rank >= 0, "model.dt_rank", self.dt_rank,
                "must be >= 0 (0 = ceil(d_model/16))")
        require(0.0 <= self.dropout < 1.0, "model.dropout", self.dropout, "must be in [0, 1)")
        require(self.vocab_size == 0 or 0 <= self.pad_id < self.vocab_size, "model.pad_id", self.pad_id,
                f"must be a token id in [0, vocab_size={self.vocab_size})")
        require(self.type_vocab_size >= TOKEN_TYPES, "model.type_vocab_size", self.type_vocab_size,
                f"must be >= the number of token types ({TOKEN_TYPES})")
        if self.backbone in ("mamba2", "mamba3"):
            require(self.d_inner % self.headdim == 0, "model.headdim", self.headdim,
                    f"must divide d_inner = expand*d_model = {self.d_inner}")
            require(self.n_ssm_heads % self.ngroups == 0, "model.ngroups", self.ngroups,
                    f"must divide the number of heads {self.n_ssm_heads}")
        if self.backbone == "mamba3":
            require(self.rope_fraction in (0.5, 1.0), "model.rope_fraction", self.rope_fraction,
                    "must be 0.5 or 1.0")
            require(self.d_state % 2 == 0 and self.n_rope_angles >= 1, "model.d_state", self.d_state,
                    f"must be even and leave at least one rotary angle (rope_fraction={self.rope_fraction})")
        if self.backbone == "transformer":
            require(self.d_model % self.n_heads == 0, "model.n_heads", self.n_heads,
                    f"must divide d_model={self.d_model}")
            require((self.d_model // self.n_heads) % 2 == 0, "model.n_heads", self.n_heads,
                    "d_model/n_heads must be even for rotary embeddings")

    # --- derived sizes -----------------------------------------------------------------------------
    def scan_chunk(self, cuda: bool) -> int:
        """Chunk length of the Mamba-2 / Mamba-3 scan for inputs on CUDA (``chunk_size``; Mamba-3 MIMO
        divides it by the rank, at least 8, as mamba-ssm's kernels do) or elsewhere (``cpu_chunk_size`` as
        it is: on the CPU a MIMO chunk of 16 is slower than 32, bench/results/backbones_cpu_chunk.json)."""
        if not cuda:
            return self.cpu_chunk_size
        return self.chunk_size if self.mimo_rank == 1 else max(8, self.chunk_size // self.mimo_rank)

    @property
    def d_inner(self) -> int:
        """Inner width of the Mamba blocks."""
        return self.expand * self.d_model

    @property
    def resolved_dt_rank(self) -> int:
        """Low-rank width of Mamba-1's dt projection."""
        return self.dt_rank or math.ceil(self.d_model / 16)

    @property
    def n_ssm_heads(self) -> int:
        """Number of Mamba-2 heads."""
        return self.d_inner // self.headdim

    @property
    def n_rope_angles(self) -> int:
        """Number of Mamba-3 rotary angles: pairs in the rotated share of the state (rounded as mamba-ssm)."""
        rotated = int(self.d_state * self.rope_fraction)
        return (rotated - rotated % 2) // 2

    @property
    def is_resolved(self) -> bool:
        """Whether ``vocab_size`` and ``max_len`` are set (a model can be built and saved)."""
        return self.vocab_size > 0 and self.max_len > 0

    def resolve(self, vocab_size: int, data_max_len: int, source: str = "the tokens") -> ModelConfig:
        """A copy with ``vocab_size`` from the vocabulary and ``max_len`` from the token rows.

        ``data_max_len``: the ``max_len`` the rows were cut at (``source`` names where it was read, e.g. the
        ``tokenize.json`` path). ``max_len=0`` takes it; a larger ``max_len`` is kept; a smaller one raises
        :class:`ConfigError` naming both values (the model could not take the rows it is trained on).
        A non-zero ``vocab_size`` that differs from the vocabulary's raises too.
        """
        require(self.vocab_size in (0, vocab_size), "model.vocab_size", self.vocab_size,
                f"comes from the vocabulary ({vocab_size} tokens); leave it 0")
        if self.max_len and self.max_len < data_max_len:
            raise ConfigError(
                f"model.max_len={self.max_len} is shorter than the token rows (max_len={data_max_len} in "
                f"{source}): "
                f"set model.max_len >= {data_max_len} (or 0 = from the tokens), or re-tokenize with "
                f"tokenizer.max_len <= {self.max_len}")
        return dataclasses.replace(self, vocab_size=vocab_size, max_len=self.max_len or data_max_len)
