"""Serving configs: Limits / ServeConfig (serve.json) and ScoreConfig round trips and field-named errors."""

from __future__ import annotations

import pytest
import yaml

from ehrfm.config.base import ConfigError
from ehrfm.config.serve import Limits, RegisterConfig, ScoreConfig, ScoreSummary, ServeConfig


def test_serve_json_round_trips_and_old_files_still_load() -> None:
    cfg = ServeConfig(limits=Limits(max_body_bytes=1_000, max_resources=10, max_clock_skew_s=0), strict=True)
    assert ServeConfig.from_dict(cfg.to_dict()) == cfg
    assert ServeConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    # a serve.json written before these fields existed: the new ones take their defaults
    old = ServeConfig.from_dict({"limits": {"max_request_bytes": 5, "max_events": 6, "max_patients": 7},
                                 "validate": "none"})
    assert old.limits == Limits(max_request_bytes=5, max_events=6, max_patients=7)
    assert old.strict is False and old.limits.max_json_depth == 64 and old.limits.max_clock_skew_s == 300


@pytest.mark.parametrize(("data", "needle"), [
    ({"limits": {"max_body_bytes": 0}}, "limits.max_body_bytes=0: must be a positive integer"),
    ({"limits": {"max_json_depth": -1}}, "limits.max_json_depth=-1"),
    ({"limits": {"max_json_elements": 0}}, "limits.max_json_elements=0"),
    ({"limits": {"max_resources": 0}}, "limits.max_resources=0"),
    ({"limits": {"max_clock_skew_s": -5}}, "limits.max_clock_skew_s=-5: must be a non-negative integer"),
    ({"strict": "sometimes"}, "strict='sometimes'"),
    ({"validate": "partly"}, "validate='partly'"),
])
def test_bad_serve_values_name_the_field(data: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        ServeConfig.from_dict(data)
    assert needle in str(e.value)


def test_score_config_fhir_source() -> None:
    cfg = ScoreConfig(source="fhir", input="bundles/", prediction_time="2020-01-01", rejects="rej")
    assert ScoreConfig.from_dict(cfg.to_dict()) == cfg
    for bad, needle in [({"source": "fhir"}, "input=None: give the folder"),
                        ({"input": "x"}, "input='x'"),
                        ({"source": "tokens", "prediction_time": "2020-01-01"}, "only with source=meds or "),
                        ({"source": "meds", "rejects": "r"}, "rejects='r': only with source=fhir")]:
        with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
            ScoreConfig.from_dict(bad)
    summary = ScoreSummary(output="o", rows=[], seconds=1.0, rejects="o_rejects", rejected=2)
    assert ScoreSummary.from_dict(summary.to_dict()) == summary


def test_register_config_carries_the_serving_defaults() -> None:
    cfg = RegisterConfig.from_dict({"strict": True, "limits": {"max_resources": 9}})
    assert cfg.strict is True and cfg.limits.max_resources == 9
    assert RegisterConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="strict"):
        RegisterConfig.from_dict({"strict": "often"})
