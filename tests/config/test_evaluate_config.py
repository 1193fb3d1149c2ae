"""EvaluateConfig (and its ReportConfig / BaselineConfig sections): round trips and field-named errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ehrfm.config.base import ConfigError
from ehrfm.config.evaluate import EvaluateConfig


def test_evaluate_config_round_trips_and_names_bad_keys(tmp_path: Path) -> None:
    cfg = EvaluateConfig(tasks=["a"], predictions="p.parquet").replace(
        **{"report.baselines": ["lr", "rsf"], "report.horizons": [30.0, 90.0],
           "baseline.windows_days": [30, None], "baseline.lr_cs": [0.1]})
    assert EvaluateConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.baseline.windows_days == (30.0, None)
    for name in ("e.yaml", "e.json"):
        cfg.save(tmp_path / name)
        assert EvaluateConfig.load(tmp_path / name) == cfg
    with pytest.raises(ConfigError, match=r"unknown config key.*'report\.nboot'"):
        EvaluateConfig.from_dict({"report": {"nboot": 3}})
    with pytest.raises(ConfigError, match=r"report\.threshold_rule='best': must be one of"):
        EvaluateConfig.from_dict({"report": {"threshold_rule": "best"}})
    with pytest.raises(ConfigError, match=r"baseline\.min_count=0"):
        EvaluateConfig.from_dict({"baseline": {"min_count": 0}})
