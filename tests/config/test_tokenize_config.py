"""TokenizeConfig (with its TokenizerConfig section) / TokenizeSummary: round trips and field-named errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ehrfm.config.base import ConfigError
from ehrfm.config.tokenize import DEFAULT_MAX_LEN, TokenizeConfig, TokenizerConfig, TokenizeSummary

CFG = TokenizeConfig(tokenizer=TokenizerConfig(max_len=256, visit_gap_hours=12.0,
                                               visit_end_patterns=("X//END",), static_prefixes=("SEX//",)),
                     tasks=["t1", "t2"], pretrain_rows=False, engine="local")


def test_round_trips(tmp_path: Path) -> None:
    assert TokenizeConfig.from_dict(CFG.to_dict()) == CFG
    assert TokenizeConfig.from_dict(yaml.safe_load(CFG.to_yaml())) == CFG  # tuples come back as tuples
    for name in ("t.yaml", "t.json"):
        CFG.save(tmp_path / name)
        assert TokenizeConfig.load(tmp_path / name) == CFG
    loaded = TokenizeConfig.load(tmp_path / "t.yaml", ["tokenizer.max_len=64", "tasks=[t3]"])
    assert loaded.tokenizer.max_len == 64 and loaded.tasks == ["t3"]
    assert loaded.tokenizer.visit_gap_hours == 12.0
    assert CFG.replace(**{"tokenizer.max_len": 32}).tokenizer.max_len == 32 and CFG.tokenizer.max_len == 256
    assert TokenizeConfig().tokenizer.max_len == DEFAULT_MAX_LEN
    summary = TokenizeSummary(tasks=["t1"], pretrain=True, n_rows=9, seconds=1.5,
                              rows=[{"task": "t1", "split": "train", "rows": 5, "label_mean": 0.4}])
    assert TokenizeSummary.from_dict(yaml.safe_load(summary.to_yaml())) == summary


@pytest.mark.parametrize(("data", "needle"), [
    ({"tokenizer": {"max_len": 3}}, "max_len=3: must be >= 8"),
    ({"tokenizer": {"max_len": "many"}}, "tokenizer.max_len='many'"),
    ({"tokenizer": {"visit_gap_hours": -1}}, "visit_gap_hours=-1"),
    ({"tokenizer": {"visit_end_patterns": "X"}}, "tokenizer.visit_end_patterns='X': expected a list"),
    ({"tokenizer": {"max_length": 9}}, "['tokenizer.max_length']"),
    ({"task_rows": False, "pretrain_rows": False}, "pretrain_rows=False"),
    ({"task_rows": False, "tasks": ["t1"]}, "task_rows=False"),
    ({"tasks": [1]}, "tasks[0]=1"),
    ({"engine": "ray"}, "engine='ray'"),
    ({"max_len": 256}, "['max_len']"),
])
def test_bad_value_names_the_field(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        TokenizeConfig.from_dict(data)
    assert needle in str(e.value)
