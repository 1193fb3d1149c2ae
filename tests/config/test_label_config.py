"""LabelConfig / LabelSummary: round trips and field-named errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ehrfm.config.base import ConfigError
from ehrfm.config.label import LabelConfig, LabelSummary
from ehrfm.config.spark import SparkConfig

CFG = LabelConfig(tasks=["readmission_30d"], tasks_dir="my/tasks", spark=SparkConfig(conf={"spark.x": "1"}))


def test_round_trips(tmp_path: Path) -> None:
    assert LabelConfig.from_dict(CFG.to_dict()) == CFG
    assert LabelConfig.from_dict(yaml.safe_load(CFG.to_yaml())) == CFG
    for name in ("l.yaml", "l.json"):
        CFG.save(tmp_path / name)
        assert LabelConfig.load(tmp_path / name) == CFG
    loaded = LabelConfig.load(tmp_path / "l.yaml", ["tasks=[]", "tasks_dir=null"])
    assert loaded == LabelConfig(spark=CFG.spark)
    summary = LabelSummary(tasks={"readmission_30d": "binary"}, warnings=["w"],
                           rows=[{"task": "readmission_30d", "split": "all", "rows": 3, "prevalence": 0.5}])
    assert LabelSummary.from_dict(yaml.safe_load(summary.to_yaml())) == summary


@pytest.mark.parametrize(("data", "needle"), [
    ({"tasks": "readmission_30d"}, "tasks='readmission_30d': expected a list"),
    ({"tasks": [3]}, "tasks[0]=3"),
    ({"tasks_dir": 5}, "tasks_dir=5"),
    ({"spark": {"master": ["local"]}}, "spark.master=['local']"),
    ({"output": "labels"}, "['output']"),
])
def test_bad_value_names_the_field(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        LabelConfig.from_dict(data)
    assert needle in str(e.value)
