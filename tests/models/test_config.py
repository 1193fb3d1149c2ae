"""ModelConfig: validation names the field, YAML/JSON round trip, presets, vocab size from the vocab file,
max_len from the tokens (and a model shorter than its tokens refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers.standin import standin_vocabulary

from ehrfm.config.base import ConfigError
from ehrfm.config.model import PAD_ID, TOKEN_TYPES
from ehrfm.models import EHRFoundationModel, ModelConfig, from_vocab, load_preset
from ehrfm.resources import preset_path
from ehrfm.schema import PAD_ID as SCHEMA_PAD_ID
from ehrfm.schema import TokenType


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
def test_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"model\.{field}="):
        ModelConfig(vocab_size=50, **kwargs)


def test_unknown_field_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown config key.*'hidden'"):
        ModelConfig.from_dict({"vocab_size": 10, "hidden": 3})
    with pytest.raises(ConfigError, match=r"d_model='wide': expected an integer"):
        ModelConfig.from_dict({"d_model": "wide"})


def test_light_constants_match_the_schema() -> None:
    # ehrfm.config.model must not import the pyarrow schema: its copies of the two constants must agree
    assert (PAD_ID, TOKEN_TYPES) == (SCHEMA_PAD_ID, TokenType.COUNT)


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
    with pytest.raises(ConfigError, match="vocab_size comes from the vocabulary"):
        from_vocab(tmp_path / "vocab.json", "tiny", vocab_size=5)
    with pytest.raises(FileNotFoundError, match="preset 'huge'"):
        load_preset("huge")
    assert ModelConfig.load(preset_path("model", "tiny")) == ModelConfig.from_dict(load_preset("tiny"))


def test_vocab_size_and_max_len_come_from_the_data() -> None:
    preset = ModelConfig.load(preset_path("model", "small"))
    assert (preset.vocab_size, preset.max_len) == (0, 0) and not preset.is_resolved
    got = preset.resolve(vocab_size=300, data_max_len=512, source="tokens/tokenize.json")
    assert (got.vocab_size, got.max_len, got.d_model) == (300, 512, preset.d_model) and got.is_resolved
    assert preset.replace(max_len=1024).resolve(300, 512).max_len == 1024  # a longer model is kept
    with pytest.raises(ConfigError, match=r"model\.max_len=256 is shorter than the token rows \(max_len=512 "
                                          r"in tokens/tokenize\.json\)"):
        preset.replace(max_len=256).resolve(300, 512, "tokens/tokenize.json")
    with pytest.raises(ConfigError, match="model.vocab_size=5"):
        preset.replace(vocab_size=5).resolve(300, 512)
    with pytest.raises(ConfigError, match="model.vocab_size=0: not resolved"):
        EHRFoundationModel(preset)
    with pytest.raises(ConfigError, match="model.max_len=0"):
        EHRFoundationModel(ModelConfig(vocab_size=40, backbone="transformer", d_model=16, n_heads=2))


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


def test_config_dir_env_replaces_the_packaged_presets(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("backbone: transformer\nd_model: 32\nn_heads: 2\n")
    monkeypatch.setenv("EHRFM_CONFIG_DIR", str(tmp_path))
    assert load_preset("mine") == {"backbone": "transformer", "d_model": 32, "n_heads": 2}
    with pytest.raises(FileNotFoundError, match="preset 'tiny'"):
        load_preset("tiny")  # the folder replaces the packaged presets wholesale
