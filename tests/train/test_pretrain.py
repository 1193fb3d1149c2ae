"""Pretraining: loss masking, optimizer groups, schedule, the typed config (overrides, presets, round trips),
the row length taken from the tokens, a short run that learns and is tracked in MLflow, and exact resume
after a simulated kill."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from mlflow.tracking import MlflowClient

from ehrfm.cli import main
from ehrfm.config.base import ConfigError
from ehrfm.config.model import ModelConfig
from ehrfm.config.train import PretrainConfig, PretrainSummary
from ehrfm.layout import Layout, TokenPaths
from ehrfm.models import EHRFoundationModel
from ehrfm.resources import preset_path
from ehrfm.train.base import param_groups, warmup_cosine
from ehrfm.train.pretrain import excluded_ids, next_token_loss
from ehrfm.train.stage import run_pretrain
from ehrfm.vocab import Vocabulary

TINY: dict[str, Any] = {
    "model.d_model": 16, "model.n_layers": 1, "model.d_state": 4, "model.headdim": 8, "model.n_heads": 2,
    "model.chunk_size": 16, "data.max_tokens": 256, "data.pool_size": 32, "trainer.progress_bar": False,
    "optim.warmup_steps": 3,
}


def _layout(tmp_path: Path, tokens: Path) -> Layout:
    return Layout(root=str(tmp_path), tokens=str(tokens))


def test_loss_ignores_pad_targets() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 9)
    ids = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 2, 1]])
    loss, n = next_token_loss(logits, ids, torch.tensor([0]))
    assert int(n) == 2 + 4
    # garbage logits at positions whose target is PAD change nothing
    noisy = logits.clone()
    noisy[0, 2:] = 1e4 * torch.randn(3, 9)
    torch.testing.assert_close(next_token_loss(noisy, ids, torch.tensor([0]))[0], loss)
    # and excluding more ids drops their targets
    assert int(next_token_loss(logits, ids, torch.tensor([0, 1, 2]))[1]) == 2 + 2
    manual = torch.nn.functional.cross_entropy(
        torch.cat([logits[0, :2], logits[1, :4]]), torch.tensor([4, 5, 7, 8, 2, 1]))
    torch.testing.assert_close(loss, manual)


def test_excluded_ids_follow_the_loss_config(standin_tokens: Path) -> None:
    vocab = Vocabulary.load(standin_tokens / "vocab.json")
    cfg = PretrainConfig().replace(**{"loss.exclude_special": True, "loss.exclude_interval": True})
    ids = excluded_ids(vocab, cfg.loss)
    assert ids[:7] == list(range(7)) and vocab.id("[M3]") in ids and vocab.id("CODE//1") not in ids
    assert excluded_ids(vocab, PretrainConfig().loss) == [0]


def test_no_weight_decay_on_norms_biases_embeddings() -> None:
    model = EHRFoundationModel(ModelConfig(vocab_size=30, d_model=16, n_layers=1))
    decay, no_decay = param_groups(model, 0.1)
    decay_ids = {id(p) for p in decay["params"]}
    assert id(model.embeddings.concept.weight) not in decay_ids  # tied with the LM head: still no decay
    assert id(model.layers[0].mixer.in_proj.weight) in decay_ids
    assert id(model.layers[0].mixer.A_log) not in decay_ids and id(model.norm_f.weight) not in decay_ids
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_then_cosine() -> None:
    lrs = [warmup_cosine(s, 10, 100, 0.1) for s in range(101)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[55] == pytest.approx(0.55, abs=0.01) and lrs[100] == pytest.approx(0.1)
    assert all(b <= a + 1e-12 for a, b in zip(lrs[10:], lrs[11:], strict=False))


def test_cli_reports_a_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["pretrain", "--root", str(tmp_path), "--trainer.max_stepz", "3"])
    assert e.value.code != 0 and "max_stepz" in capsys.readouterr().err
    assert main(["pretrain", "--root", str(tmp_path), "--model.vocab_size", "7"]) == 2
    assert "model.vocab_size=7" in capsys.readouterr().err
    assert main(["pretrain", "--root", str(tmp_path)]) == 2  # no tokens there: a clean error, not a traceback
    assert "vocab.json" in capsys.readouterr().err


def test_model_shorter_than_its_tokens_is_refused(standin_tokens: Path, tmp_path: Path) -> None:
    cfg = PretrainConfig().replace(**TINY, **{"model.max_len": 32, "tracking.enabled": False})
    meta = TokenPaths(standin_tokens).meta
    with pytest.raises(ConfigError, match=rf"model\.max_len=32 is shorter than the token rows "
                                          rf"\(max_len=64 in {meta}\)"):
        run_pretrain(cfg, _layout(tmp_path, standin_tokens))
    assert not (tmp_path / "runs").exists()  # refused before anything was written


@pytest.mark.slow
def test_pretrain_learns_and_is_tracked(standin_tokens: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = PretrainConfig.load(preset_path("pretrain", "tiny")).replace(**{
        **TINY, "model.backbone": "mamba2", "model.d_model": 32, "trainer.max_steps": 40,
        "trainer.val_check_interval": 20, "trainer.checkpoint_every_n_steps": 20,
        "trainer.log_every_n_steps": 5, "optim.lr": 1e-2})
    layout = _layout(tmp_path, standin_tokens)
    run = layout.pretrain_run
    first: dict[str, float] = {}

    class FirstLoss(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            first.setdefault("loss", float(trainer.callback_metrics["train_loss"]))

    summary = run_pretrain(cfg, layout, callbacks=[FirstLoss()])
    assert summary.global_step == 40 and summary.max_len == 64  # the tokens' max_len
    assert summary.train_loss is not None and summary.train_loss < first["loss"] - 0.5, (first, summary)
    assert summary.val_loss is not None and summary.val_ppl is not None and summary.val_ppl < 60
    assert PretrainSummary.from_dict(json.loads(run.summary.read_text())) == summary
    assert PretrainConfig.load(run.config) == cfg  # the run's config repeats the run
    model = EHRFoundationModel.from_pretrained(run.model)
    assert model.config.vocab_size == len(Vocabulary.load(run.model / "vocab.json"))
    assert model.config.max_len == 64
    assert {p.name for p in run.checkpoints.iterdir()} >= {"last.ckpt", "best.ckpt"}

    client = MlflowClient(layout.tracking_uri())
    assert layout.mlflow_db.exists()
    mlrun = client.get_run(summary.mlflow_run_id)
    assert mlrun.info.status == "FINISHED"
    assert Path(mlrun.info.artifact_uri.removeprefix("file://")).is_relative_to(layout.mlflow_artifacts.resolve())
    params = mlrun.data.params
    assert params["model_resolved.backbone"] == "mamba2" and params["trainer.max_steps"] == "40"
    assert params["model_resolved.max_len"] == "64" and params["model.max_len"] == "0"
    assert {"train_loss", "val_loss", "val_ppl", "lr"} <= set(mlrun.data.metrics)
    assert len(client.get_metric_history(mlrun.info.run_id, "train_loss")) >= 8
    assert mlrun.data.tags["backbone"] == "mamba2" and mlrun.data.tags["ops_path"] == "chunked"
    assert len(mlrun.data.tags["git_commit"]) == 40
    arts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"run_config.yaml", "summary.json", "model", "checkpoints"} <= arts
    assert {Path(a.path).name for a in client.list_artifacts(mlrun.info.run_id, "model")} == {
        "config.yaml", "model.pt", "vocab.json"}
    with pytest.raises(FileExistsError, match="trainer.resume"):
        run_pretrain(cfg, layout)


class SimulatedKill(Exception):
    """Stands in for SIGKILL (Lightning turns KeyboardInterrupt into a graceful shutdown + exit)."""


class Kill(pl.Callback):
    """Simulates a kill right after the checkpoint at ``at_step`` was written."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            raise SimulatedKill(f"killed at step {self.at_step}")


def _final_state(layout: Layout) -> dict[str, torch.Tensor]:
    return dict(EHRFoundationModel.from_pretrained(layout.pretrain_run.model).state_dict())


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mamba"])
def test_exact_resume(standin_tokens: Path, tmp_path: Path, backbone: str) -> None:
    # dropout on, gradient accumulation, a validation between kill and end, several data epochs
    cfg = PretrainConfig().replace(**{
        **TINY, "model.backbone": backbone, "model.dropout": 0.2, "trainer.max_steps": 10,
        "trainer.accumulate_grad_batches": 2, "trainer.checkpoint_every_n_steps": 3,
        "trainer.val_check_interval": 4, "tracking.enabled": False})
    whole_layout = _layout(tmp_path / "whole", standin_tokens)
    killed_layout = _layout(tmp_path / "killed", standin_tokens)
    whole = run_pretrain(cfg, whole_layout)

    with pytest.raises(SimulatedKill):
        run_pretrain(cfg, killed_layout, callbacks=[Kill(at_step=6)])
    ckpt = torch.load(killed_layout.pretrain_run.checkpoints / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6 and ckpt["ehrfm"]["micro_batches_seen"] == 12
    resumed = run_pretrain(cfg.replace(**{"trainer.resume": "last"}), killed_layout)
    assert resumed.resumed_from and resumed.global_step == 10

    a, b = _final_state(whole_layout), _final_state(killed_layout)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs after resume")
    assert resumed.train_loss == pytest.approx(whole.train_loss, rel=1e-5)
    assert resumed.val_loss == pytest.approx(whole.val_loss, rel=1e-5)
