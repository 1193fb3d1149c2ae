"""PrepareConfig / PrepareSummary: dict, YAML and JSON round trips; bad values are errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ehrfm.config.base import ConfigError
from ehrfm.config.prepare import PrepareConfig, PrepareSummary
from ehrfm.config.spark import SparkConfig

CFG = PrepareConfig(min_count=2, n_bins=10, tasks=["readmission_30d", "mortality_inhospital"],
                    tasks_dir="my/tasks", engine="local",
                    spark=SparkConfig(master="local[2]", conf={"spark.driver.memory": "2g"}))


def test_round_trips(tmp_path: Path) -> None:
    assert PrepareConfig.from_dict(CFG.to_dict()) == CFG
    assert PrepareConfig.from_dict(yaml.safe_load(CFG.to_yaml())) == CFG
    for name in ("p.yaml", "p.json"):
        CFG.save(tmp_path / name)
        assert PrepareConfig.load(tmp_path / name) == CFG
    loaded = PrepareConfig.load(tmp_path / "p.yaml", ["n_bins=4", "spark.master=null"])
    assert (loaded.n_bins, loaded.spark.master, loaded.min_count) == (4, None, 2)
    assert PrepareConfig.from_dict({}) == PrepareConfig() and PrepareConfig().tasks == []
    summary = PrepareSummary(tasks=["a"], train_subjects=3, train_events=10, codes_seen_on_train=4,
                             codes_kept=3, vocab_size=40, codes_with_bins=1, seconds=0.5)
    assert PrepareSummary.from_dict(yaml.safe_load(summary.to_yaml())) == summary


@pytest.mark.parametrize(("data", "needle"), [
    ({"min_count": 0}, "min_count=0"),
    ({"n_bins": 1}, "n_bins=1"),
    ({"n_bins": "many"}, "n_bins='many'"),
    ({"percentile_accuracy": 0}, "percentile_accuracy=0"),
    ({"engine": "gpu"}, "engine='gpu'"),
    ({"tasks": "readmission_30d"}, "tasks='readmission_30d': expected a list"),
    ({"tasks": [""]}, "tasks=['']"),
    ({"tasks": ["a"], "task_tokens": False}, "task_tokens=False"),
    ({"task_tokens": "no"}, "task_tokens='no'"),
    ({"spark": {"conf": {"spark.driver.memory": 8}}}, "spark.conf.spark.driver.memory=8"),
    ({"min_counts": 3}, "['min_counts']"),
])
def test_bad_value_names_the_field(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        PrepareConfig.from_dict(data)
    assert needle in str(e.value)
