"""Models: typed configs, EHRMamba embeddings, Mamba-1 / Mamba-2 / transformer backbones, tied LM head."""

from ehrfm.models.config import BACKBONES, ModelConfig, from_vocab, load_preset
from ehrfm.models.model import EHRFoundationModel, InferenceCache, ModelOutput, pool

__all__ = ["BACKBONES", "EHRFoundationModel", "InferenceCache", "ModelConfig", "ModelOutput", "from_vocab",
           "load_preset", "pool"]
