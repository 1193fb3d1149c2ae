"""PretrainConfig / FinetuneConfig / EvaluateConfig and their summaries: the defaults are the packaged tiny
presets, every shipped preset loads into its class, dict/YAML/JSON round trips, overrides typed and checked,
partial sections keep the stage's defaults, model presets, and errors that name the dotted key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from ehrfm import resources
from ehrfm.config.base import ConfigBase, ConfigError
from ehrfm.config.evaluate import EvaluateConfig, EvaluateSummary, PrimaryMetric
from ehrfm.config.model import ModelConfig
from ehrfm.config.train import FinetuneConfig, FinetuneSummary, PretrainConfig, PretrainSummary
from ehrfm.resources import preset_path

PRESET_CLASSES: dict[str, type[ConfigBase]] = {"model": ModelConfig, "pretrain": PretrainConfig,
                                               "finetune": FinetuneConfig}


def test_every_shipped_preset_loads_into_its_config(tmp_path: Path) -> None:
    files = sorted(resources.presets_dir().glob("*/*.yaml"))
    assert {f.parent.name for f in files} == set(PRESET_CLASSES) and len(files) >= 4
    for path in files:
        cls = PRESET_CLASSES[path.parent.name]
        cfg = cls.load(path)
        assert cls.from_dict(cfg.to_dict()) == cfg, path
        assert cls.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg, path
        cfg.save(tmp_path / "again.yaml")
        assert cls.load(tmp_path / "again.yaml") == cfg, path
        if isinstance(cfg, ModelConfig):
            assert cfg.vocab_size == 0 and cfg.max_len == 0, f"{path}: vocab_size/max_len come from the data"
    assert PretrainConfig.load(preset_path("pretrain", "tiny")) == PretrainConfig()
    assert FinetuneConfig.load(preset_path("finetune", "tiny")) == FinetuneConfig()


def test_set_overrides_are_typed_and_checked() -> None:
    tiny = preset_path("pretrain", "tiny")
    cfg = PretrainConfig.load(tiny, ["trainer.max_steps=7", "optim.lr=1e-4", "model.backbone=mamba",
                                     "trainer.devices=2"])
    got = (cfg.trainer.max_steps, cfg.optim.lr, cfg.model.backbone, cfg.trainer.devices)
    assert got == (7, 1e-4, "mamba", 2)
    for bad, msg in [("trainer.max_step=5", r"unknown config key.*'trainer\.max_step'"),
                     ("trainer.max_steps=many", "trainer.max_steps='many': expected an integer"),
                     ("trainer.max_steps=0", "trainer.max_steps=0"),
                     ("tracking.enabled=maybe", "tracking.enabled='maybe': expected true/false"),
                     ("model.widht=3", r"unknown config key.*'model\.widht'"),
                     ("model.backbone=rnn", r"model\.backbone='rnn': must be one of"),
                     ("model.vocab_size=5", "model.vocab_size=5: comes from the vocabulary"),
                     ("nonsense", "expected key=value"),
                     ("optim=3", "optim: expected a mapping")]:
        with pytest.raises(ConfigError, match=msg):
            PretrainConfig.load(tiny, [bad])


def test_defaults_are_the_tiny_preset_and_round_trip(tmp_path: Path) -> None:
    cfg = PretrainConfig()
    assert PretrainConfig.load(preset_path("pretrain", "tiny")) == cfg
    assert cfg.model.backbone == "mamba2" and cfg.model.vocab_size == 0 and cfg.model.max_len == 0
    assert PretrainConfig.from_dict(cfg.to_dict()) == cfg
    changed = cfg.replace(**{"trainer.max_steps": 9, "model.d_model": 32, "tracking.run_name": "x"})
    for name in ("c.yaml", "c.json"):
        changed.save(tmp_path / name)
        assert PretrainConfig.load(tmp_path / name) == changed
    # a partial section keeps the stage's other defaults (as the CLI does), not the section class's
    part = PretrainConfig.from_dict({"optim": {"warmup_steps": 5}})
    assert (part.optim.lr, part.optim.warmup_steps) == (cfg.optim.lr, 5)


def test_model_preset_replaces_the_model_section(tmp_path: Path) -> None:
    small = ModelConfig.load(preset_path("model", "small"))
    by_name = PretrainConfig.from_dict({"model": "small"})
    assert by_name.model == small
    (tmp_path / "p.yaml").write_text(f"model: {preset_path('model', 'small')}\ntrainer:\n  max_steps: 3\n")
    assert PretrainConfig.load(tmp_path / "p.yaml").model == small
    assert PretrainConfig.load(tmp_path / "p.yaml", ["model.n_layers=2"]).model.n_layers == 2


def test_config_defaults_round_trips_and_errors(tmp_path: Path) -> None:
    cfg = FinetuneConfig()
    assert FinetuneConfig.load(preset_path("finetune", "tiny")) == cfg
    assert FinetuneConfig.from_dict(cfg.to_dict()) == cfg
    changed = cfg.replace(**{"tasks": ["a", "b"], "adapt.mode": "lora", "adapt.few_shot": 16,
                             "evaluate": True, "report.baselines": ["lr", "cox"], "report.n_boot": 0,
                             "task_weights": {"a": 2.0}, "trainer.resume": "auto"})
    for name in ("f.yaml", "f.json"):
        changed.save(tmp_path / name)
        assert FinetuneConfig.load(tmp_path / name) == changed
    assert FinetuneConfig.from_dict({"optim": {"lr": 1e-4}}).optim.weight_decay == cfg.optim.weight_decay
    cases: list[tuple[dict[str, Any], str]] = [
        ({"adapt": {"mode": "qlora"}}, r"adapt\.mode='qlora': must be one of"),
        ({"adapt": {"few_shot": -1}}, r"adapt\.few_shot=-1"),
        ({"report": {"baselines": ["xgb"]}}, r"report\.baselines=\['xgb'\]: unknown"),
        ({"heads": {"tte_edges_days": [5, 1]}}, r"heads\.tte_edges_days"),
        ({"task_weights": {"a": -1}}, r"task_weights\.a=-1"),
        ({"trainer": {"devcies": 2}}, r"unknown config key.*'trainer\.devcies'"),
        ({"monitor": "f1"}, r"monitor='f1'"),
    ]
    for bad, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            FinetuneConfig.from_dict(bad)


def test_summaries_round_trip() -> None:
    pre = PretrainSummary(global_step=3, train_loss=2.5, val_loss=None, val_ppl=None, seconds=1.5,
                          parameters=10, train_rows=8, val_rows=0, backbone="mamba2", max_len=64,
                          model_dir="runs/pretrain/model", mlflow_run_id="abc")
    primary = [PrimaryMetric(task="a", model="m", metric="auroc", n=10, value=0.8, ci_low=0.7, ci_high=0.9),
               PrimaryMetric(task="b", model="m", metric="harrell_c", n=5, value=None)]
    ft = FinetuneSummary(tasks=["a", "b"], global_step=6, seconds=2.0, mode="lora", few_shot=16,
                         train_rows={"a": 16, "b": 16}, tuning_rows={"a": 4, "b": 4},
                         trainable_parameters=100, lora_parameters=50, val_metrics_at_best={"val_loss": 0.5},
                         tuning={"a": {"n": 4, "auroc": 0.75}}, model_name="ehrfm_mamba2", max_len=64,
                         model_dir="runs/finetune/model", predictions="runs/finetune/predictions.parquet",
                         report=primary)
    ev = EvaluateSummary(report_json="evaluation/report.json", report_md="evaluation/report.md", tasks=["a"],
                         primary=primary, prediction_tasks_without_labels=["c"])
    for summary in (pre, ft, ev):
        assert type(summary).from_dict(summary.to_dict()) == summary
        assert type(summary).from_dict(yaml.safe_load(summary.to_yaml())) == summary


@pytest.mark.parametrize(("cls", "data", "key"), [
    (PretrainConfig, {"trainer": {"max_stepz": 3}}, "trainer.max_stepz"),
    (PretrainConfig, {"model": {"d_modle": 3}}, "model.d_modle"),
    (FinetuneConfig, {"adapt": {"lora_rnak": 3}}, "adapt.lora_rnak"),
    (FinetuneConfig, {"report": {"nboot": 3}}, "report.nboot"),
    (EvaluateConfig, {"baseline": {"trees": 3}}, "baseline.trees"),
    (EvaluateConfig, {"report": {"n_boot": "many"}}, "report.n_boot"),
    (FinetuneConfig, {"data": {"max_tokens": 2}}, "data.max_tokens"),
    (PretrainConfig, {"optim": {"betas": [0.9]}}, "optim.betas"),
])
def test_errors_name_the_dotted_key(cls: type[ConfigBase], data: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        cls.from_dict(data)


def test_no_field_named_like_a_layout_field() -> None:
    from ehrfm.layout import Layout

    layout = set(Layout.__dataclass_fields__)
    for cls in (PretrainConfig, FinetuneConfig, EvaluateConfig):
        assert not layout & set(cls.__dataclass_fields__), cls


def test_pretrain_and_finetune_share_their_sections() -> None:
    pre, ft = PretrainConfig.__dataclass_fields__, FinetuneConfig.__dataclass_fields__
    shared = set(pre) & set(ft)
    assert shared == {"data", "optim", "trainer", "tracking"}
    for name in shared:
        assert pre[name].type == ft[name].type
