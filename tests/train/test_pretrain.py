"""Pretraining: loss masking, optimizer groups, schedule, config overrides, a short run that learns and is
tracked in MLflow, and exact resume after a simulated kill."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from mlflow.tracking import MlflowClient

from ehrfm.cli import build_parser
from ehrfm.models import EHRFoundationModel, ModelConfig
from ehrfm.train.base import param_groups, warmup_cosine
from ehrfm.train.config import load_pretrain_config
from ehrfm.train.pretrain import excluded_ids, next_token_loss
from ehrfm.train.pretrain_run import run_pretraining
from ehrfm.vocab import Vocabulary

TINY = [
    "model.d_model=16", "model.n_layers=1", "model.d_state=4", "model.headdim=8", "model.n_heads=2",
    "model.chunk_size=16", "model.max_len=64", "data.max_len=64", "data.max_tokens=256", "data.pool_size=32",
    "trainer.progress_bar=false", "optim.warmup_steps=3",
]


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
    cfg = load_pretrain_config(None, ["loss.exclude_special=true", "loss.exclude_interval=true"])
    ids = excluded_ids(vocab, cfg.loss)
    assert ids[:7] == list(range(7)) and vocab.id("[M3]") in ids and vocab.id("CODE//1") not in ids
    assert excluded_ids(vocab, load_pretrain_config(None).loss) == [0]


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


def test_set_overrides_are_typed_and_checked() -> None:
    cfg = load_pretrain_config("configs/pretrain/tiny.yaml", ["trainer.max_steps=7", "optim.lr=1e-4",
                                                              "model.backbone=mamba2", "trainer.devices=2"])
    assert (cfg.trainer.max_steps, cfg.optim.lr, cfg.model["backbone"], cfg.trainer.devices) == (7, 1e-4, "mamba2", 2)
    for bad, msg in [("trainer.max_step=5", "unknown config key.*trainer.max_step"),
                     ("trainer.max_steps=many", "trainer.max_steps='many': expected an integer"),
                     ("trainer.max_steps=0", "trainer.max_steps=0"),
                     ("tracking.enabled=maybe", "expected true/false"),
                     ("model.widht=3", "model: unknown key"), ("nonsense", "expected key=value"),
                     ("optim=3", "optim: expected a mapping")]:
        with pytest.raises(ValueError, match=msg):
            load_pretrain_config("configs/pretrain/tiny.yaml", [bad])


def test_cli_reports_bad_set(tmp_path: Path) -> None:
    args = build_parser().parse_args(["pretrain", "--data", str(tmp_path), "--output", str(tmp_path / "o"),
                                      "--set", "trainer.max_stepz=3"])
    with pytest.raises(SystemExit, match="unknown config key"):
        args_module = __import__(args._module, fromlist=["run"])
        args_module.run(args)


@pytest.mark.slow
def test_pretrain_learns_and_is_tracked(standin_tokens: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_pretrain_config("configs/pretrain/tiny.yaml", [
        *TINY, "model.backbone=mamba2", "model.d_model=32", "trainer.max_steps=40", "trainer.val_check_interval=20",
        "trainer.checkpoint_every_n_steps=20", "trainer.log_every_n_steps=5", "optim.lr=1e-2"])
    out = tmp_path / "run"
    first: dict[str, float] = {}

    class FirstLoss(pl.Callback):
        def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
            first.setdefault("loss", float(trainer.callback_metrics["train_loss"]))

    summary = run_pretraining(cfg, standin_tokens, out, callbacks=[FirstLoss()])
    assert summary["global_step"] == 40
    assert summary["train_loss"] < first["loss"] - 0.5, (first, summary)  # ln(V)=~4.6 at start
    assert summary["val_loss"] is not None and summary["val_ppl"] < 60
    model = EHRFoundationModel.from_pretrained(out / "model")
    assert model.config.vocab_size == len(Vocabulary.load(out / "model" / "vocab.json"))
    assert {p.name for p in (out / "checkpoints").iterdir()} >= {"last.ckpt", "best.ckpt"}

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model_resolved.backbone"] == "mamba2" and run.data.params["trainer.max_steps"] == "40"
    assert {"train_loss", "val_loss", "val_ppl", "lr"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 8
    assert run.data.tags["backbone"] == "mamba2" and run.data.tags["ops_path"] == "chunked"
    assert len(run.data.tags["git_commit"]) == 40
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"pretrain_config.yaml", "model", "checkpoints"} <= arts
    assert {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "model")} == {
        "config.yaml", "model.pt", "vocab.json"}
    with pytest.raises(FileExistsError, match="--resume"):
        run_pretraining(cfg, standin_tokens, out)


class SimulatedKill(Exception):
    """Stands in for SIGKILL (Lightning turns KeyboardInterrupt into a graceful shutdown + exit)."""


class Kill(pl.Callback):
    """Simulates a kill right after the checkpoint at ``at_step`` was written."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            raise SimulatedKill(f"killed at step {self.at_step}")


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    return EHRFoundationModel.from_pretrained(out / "model").state_dict()


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["mamba"])
def test_exact_resume(standin_tokens: Path, tmp_path: Path, backbone: str) -> None:
    # dropout on, gradient accumulation, a validation between kill and end, several data epochs
    sets = [*TINY, f"model.backbone={backbone}", "model.dropout=0.2", "trainer.max_steps=10",
            "trainer.accumulate_grad_batches=2", "trainer.checkpoint_every_n_steps=3",
            "trainer.val_check_interval=4", "tracking.enabled=false"]
    cfg = load_pretrain_config(None, sets)
    whole = run_pretraining(cfg, standin_tokens, tmp_path / "whole")

    with pytest.raises(SimulatedKill):
        run_pretraining(cfg, standin_tokens, tmp_path / "killed", callbacks=[Kill(at_step=6)])
    ckpt = torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 6 and ckpt["ehrfm"]["micro_batches_seen"] == 12
    resumed = run_pretraining(cfg, standin_tokens, tmp_path / "killed", resume="auto")
    assert resumed["resumed_from"] and resumed["global_step"] == 10

    a, b = _final_state(tmp_path / "whole"), _final_state(tmp_path / "killed")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6, msg=f"{k} differs after resume")
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-5)
    assert resumed["val_loss"] == pytest.approx(whole["val_loss"], rel=1e-5)
