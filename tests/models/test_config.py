"""ModelConfig: validation names the field, YAML/JSON round trip, presets, vocab size from the vocab file."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrfm.data.standin import standin_vocabulary
from ehrfm.models import EHRFoundationModel, ModelConfig, from_vocab, load_preset


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"backbone": "rnn"}, "backbone"),
        ({"d_model": 0}, "d_model"),
        ({"n_layers": 1.5}, "n_layers"),
        ({"dropout": 1.0}, "dropout"),
        ({"pad_id": 99}, "pad_id"),
        ({"backbone": "mamba2", "d_model": 48, "headdim": 64}, "headdim"),
        ({"backbone": "transformer", "d_model": 64, "n_heads": 5}, "n_heads"),
        ({"type_vocab_size": 3}, "type_vocab_size"),
    ],
)
def test_validation_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}="):
        ModelConfig(vocab_size=50, **kwargs)


def test_unknown_field_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown field.*hidden"):
        ModelConfig.from_dict({"vocab_size": 10, "hidden": 3})


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path: Path, suffix: str) -> None:
    cfg = ModelConfig(vocab_size=77, backbone="mamba2", d_model=32, headdim=16, dropout=0.0, use_time=False)
    cfg.save(tmp_path / f"c{suffix}")
    assert ModelConfig.load(tmp_path / f"c{suffix}") == cfg


def test_presets_and_vocab_size(tmp_path: Path) -> None:
    vocab = standin_vocabulary(n_codes=30)
    vocab.save(tmp_path / "vocab.json")
    tiny = from_vocab(tmp_path / "vocab.json", "tiny")
    assert tiny.vocab_size == len(vocab)
    small = from_vocab(tmp_path / "vocab.json", "small", backbone="mamba2")
    assert (small.d_model, small.n_layers, small.backbone) == (768, 32, "mamba2")
    assert "vocab_size" not in load_preset("small")
    with pytest.raises(ValueError, match="vocab_size comes from the vocabulary"):
        from_vocab(tmp_path / "vocab.json", "tiny", vocab_size=5)
    with pytest.raises(FileNotFoundError, match="preset 'huge'"):
        load_preset("huge")


def test_small_preset_is_ehrmamba_sized() -> None:
    # EHRMamba: ~768 hidden, 32 layers; count parameters without allocating a huge vocabulary
    cfg = ModelConfig.from_dict({**load_preset("small"), "vocab_size": 1000})
    assert 80e6 < EHRFoundationModel(cfg).num_parameters() < 200e6


def test_config_saved_beside_weights(tmp_path: Path) -> None:
    cfg = ModelConfig(vocab_size=40, d_model=16, n_layers=1)
    model = EHRFoundationModel(cfg)
    model.save_pretrained(tmp_path / "m")
    again = EHRFoundationModel.from_pretrained(tmp_path / "m")
    assert again.config == cfg
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert (a == b).all(), k


def test_configs_saved_before_code_inputs_rebuild_without_them() -> None:
    # a config.yaml written before use_code_counts/use_value_deltas existed must load the same weights
    old = ModelConfig(vocab_size=40).to_dict()
    for key in ("use_code_counts", "max_code_count", "use_value_deltas"):
        old.pop(key)
    model = EHRFoundationModel(ModelConfig.from_dict(old))
    assert model.embeddings.count is None and model.embeddings.delta is None
    assert load_preset("tiny")["use_code_counts"] is True and load_preset("small")["use_value_deltas"] is True
