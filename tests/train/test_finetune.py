"""MTF end to end on a tiny planted task dataset: sampling, few-shot, training, saving, predictions in the
evaluation contract accepted by ``build_report``, the typed config, the row length taken from the tokens (a
pretrained model shorter than them refused), and the CLI (LoRA + few-shot + MLflow nesting + the report)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ehrfm.config.base import ConfigError
from ehrfm.config.tokenize import TokenizerConfig
from ehrfm.config.train import FinetuneConfig, FinetuneSummary
from ehrfm.layout import Layout, TokenPaths
from ehrfm.models import EHRFoundationModel, ModelConfig
from ehrfm.schema import CLS, INTERVAL_TOKENS, TOKENS_SCHEMA, TokenType, task_token
from ehrfm.vocab import Vocabulary

TASKS = {"bin_a": "binary", "bin_b": "binary", "tte_c": "tte", "fc_d": "forecast"}
DX = [f"DIAGNOSIS//ICD//10//D{i}" for i in range(12)]
LABS = [f"LAB//LOINC//{i}" for i in range(8)]
T0 = pd.Timestamp("2020-01-01")
MAX_LEN = 64


def _split(sid: int) -> str:
    b = sid % 10
    return "train" if b < 6 else ("tuning" if b < 8 else "held_out")


def _row(vocab: Vocabulary, codes: list[str], day: float, lead: str,
         trail: str | None) -> dict[str, list[Any]]:
    ids = [vocab.id(lead)] + [vocab.id(c) for c in codes] + ([vocab.id(trail)] if trail else [])
    typ = [TokenType.TASK if trail else TokenType.SPECIAL] + [TokenType.CODE] * len(codes) + (
        [TokenType.TASK] if trail else [])
    m = len(ids)
    return {"concept_ids": ids, "type_ids": typ, "ages": [50.0] * m, "times": [day] * m,
            "visit_orders": [1] * m, "visit_segments": [1] * m, "values": [float("nan")] * m}


def _add(dst: dict[str, list[Any]], sid: int, pt: pd.Timestamp, streams: dict[str, list[Any]],
         task: str | None, **lab: object) -> None:
    vals = {"subject_id": sid, "split": _split(sid), "task": task, "prediction_time": pt if task else None,
            "length": len(streams["concept_ids"]), **streams, "label": None, "duration_days": None,
            "event": None, "target_ids": None, **lab}
    for k, v in vals.items():
        dst[k].append(v)


def write_task_tokens(root: Path, n: int = 400, seed: int = 0) -> tuple[Path, Path, Path]:
    """tokens/ (vocab, pretrain + task rows), labels/ and meds/ of ``n`` subjects with planted labels:
    bin_a = latest code in D0..D3, bin_b = D1 and D2, tte_c events early when D3, fc_d targets = the history's
    D4..D7. Rows are at most 32 tokens; tokenize.json records max_len 64."""
    rng = np.random.default_rng(seed)
    vocab = Vocabulary.build([*INTERVAL_TOKENS, *[task_token(t) for t in TASKS], *DX, *LABS])
    tokens, labels, meds = root / "tokens", root / "labels", root / "meds"
    for p in (tokens / "pretrain", labels, meds / "data", meds / "metadata"):
        p.mkdir(parents=True, exist_ok=True)
    vocab.save(tokens / "vocab.json")
    pre: dict[str, list[Any]] = {f.name: [] for f in TOKENS_SCHEMA}
    task_rows: dict[str, dict[str, list[Any]]] = {t: {f.name: [] for f in TOKENS_SCHEMA} for t in TASKS}
    lab_rows: dict[str, list[dict[str, Any]]] = {t: [] for t in TASKS}
    events = []
    for sid in range(n):
        codes = list(rng.choice(DX + LABS, size=int(rng.integers(6, 30))))
        has = {c: c in codes for c in DX}
        pt = T0 + pd.Timedelta(days=int(sid))
        for k, c in enumerate(codes):
            events.append({"subject_id": sid, "time": pt - pd.Timedelta(hours=len(codes) - k), "code": c})
        day = float((pt - pd.Timestamp("1970-01-01")).days)

        _add(pre, sid, pt, _row(vocab, codes, day, CLS, None), None)
        ya = float(codes[-1] in DX[:4])  # the latest code: learnable in a few dozen steps
        yb = float(has[DX[1]] and has[DX[2]])
        dur = float(rng.uniform(5, 120) if has[DX[3]] else rng.uniform(100, 500))
        ev = int(dur <= 365 and rng.random() < 0.8)
        dur = min(dur, 365.0)
        tgt = [d for d in DX[4:8] if has[d]] or [DX[4]]
        for t, lab in (("bin_a", {"label": ya}), ("bin_b", {"label": yb}),
                       ("tte_c", {"duration_days": dur, "event": ev}),
                       ("fc_d", {"target_ids": [vocab.id(c) for c in tgt]})):
            _add(task_rows[t], sid, pt, _row(vocab, codes, day, task_token(t), task_token(t)), t, **lab)
            base = {"subject_id": sid, "prediction_time": pt}
            if t.startswith("bin"):
                lab_rows[t].append({**base, "boolean_value": bool(lab["label"])})
            elif t == "tte_c":
                lab_rows[t].append({**base, "duration_days": dur, "event": ev})
            else:
                lab_rows[t].append({**base, "target_codes": tgt})
    pq.write_table(pa.Table.from_pydict(pre, schema=TOKENS_SCHEMA), tokens / "pretrain" / "part-0.parquet")
    for t, rows in task_rows.items():
        folder = TokenPaths(tokens).task(t)
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pydict(rows, schema=TOKENS_SCHEMA), folder / "part-0.parquet")
        pd.DataFrame(lab_rows[t]).to_parquet(labels / f"{t}.parquet", index=False)
    pd.DataFrame(events).to_parquet(meds / "data" / "part-0.parquet", index=False)
    splits = pd.DataFrame({"subject_id": np.arange(n, dtype=np.int64),
                           "split": [_split(i) for i in range(n)]})
    splits.to_parquet(meds / "metadata" / "subject_splits.parquet", index=False)
    record_max_len(tokens, MAX_LEN)
    return tokens, labels, meds


def record_max_len(tokens: Path, max_len: int) -> None:
    """``tokens/tokenize.json`` as ``ehrfm tokenize`` leaves it (only the tokenizer config is read here)."""
    TokenPaths(tokens).meta.write_text(json.dumps({"config": TokenizerConfig(max_len=max_len).to_dict()}))


def write_pretrained(run_dir: Path, vocab_path: Path, backbone: str = "mamba2",
                     max_len: int = MAX_LEN) -> Path:
    """A randomly initialised tiny model saved like `ehrfm pretrain` (``<run>/model``)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(Vocabulary.load(vocab_path)), backbone=backbone, d_model=32, n_layers=1,
                      headdim=16, chunk_size=16, cpu_chunk_size=16, max_len=max_len, dropout=0.0)
    model_dir = EHRFoundationModel(cfg).save_pretrained(run_dir / "model")
    (model_dir / "vocab.json").write_text(vocab_path.read_text())
    return run_dir


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pipeline root with tokens/, labels/ and meds/ of the planted tasks."""
    root = tmp_path_factory.mktemp("ft")
    write_task_tokens(root)
    return root


def _layout(planted: Path, tmp_path: Path, model_max_len: int = MAX_LEN) -> Layout:
    """The planted data read in place; runs, evaluation and the MLflow store in ``tmp_path``, with a
    pretrained model in its runs/pretrain/."""
    layout = Layout(root=str(tmp_path), tokens=str(planted / "tokens"), labels=str(planted / "labels"),
                    meds=str(planted / "meds"))
    write_pretrained(layout.pretrain_run.root, layout.token_paths.vocab, max_len=model_max_len)
    return layout


def _cfg(steps: int = 80, **extra: Any) -> FinetuneConfig:
    return FinetuneConfig().replace(**{
        "trainer.max_steps": steps, "trainer.val_check_interval": 20, "trainer.checkpoint_every_n_steps": 20,
        "trainer.progress_bar": False, "data.max_tokens": 1280, "tracking.enabled": False, "optim.lr": 5e-3,
        "optim.warmup_steps": 5, "patience": 0, **extra})


def test_task_balanced_sampler_mixes_tasks_and_is_deterministic(planted: Path) -> None:
    from ehrfm.data.multitask import MultiTaskDataset, TaskBalancedSampler
    from ehrfm.train.finetune_run import task_datasets

    data = MultiTaskDataset(list(TASKS), task_datasets(TokenPaths(planted / "tokens"), list(TASKS), "train"))
    s = TaskBalancedSampler(data, [1.0, 1.0, 1.0, 3.0], max_tokens=640, max_len=64, seed=0, total=200)
    batches = list(s)
    tasks = np.array([data.locate(i)[0] for b in batches for i in b])
    share = np.bincount(tasks, minlength=4) / len(tasks)
    assert abs(share[3] - 0.5) < 0.06 and all(abs(x - 1 / 6) < 0.05 for x in share[:3])
    assert np.mean([len({data.locate(i)[0] for i in b}) > 1 for b in batches]) > 0.9  # batches mix tasks
    assert batches[57] == TaskBalancedSampler(data, [1, 1, 1, 3], 640, 64, 0, 200, start=57).batch(57)
    width = [max(min(int(data.lengths[i]), 64) for i in b) for b in batches]
    assert all(len(b) * (-(-w // 8) * 8) <= 640 for b, w in zip(batches, width, strict=True))


def test_task_balanced_sampler_buckets_by_length() -> None:
    """Rows of very different lengths (as real task rows: ~250 median, ~500 p90): batches are built from
    length-sorted pools, so real tokens fill most of each padded batch (unsorted random rows fill ~55%)."""
    from types import SimpleNamespace

    from ehrfm.data.multitask import TaskBalancedSampler

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 512, size=3000)
    data = SimpleNamespace(rows=[np.arange(1000), np.arange(2000)], offsets=np.array([0, 1000, 3000]),
                           lengths=lengths)
    s = TaskBalancedSampler(data, [1.0, 1.0], max_tokens=4096, max_len=512, seed=3, total=300)
    batches = list(s)
    widths = [max(-(-int(lengths[i]) // 8) * 8 for i in b) for b in batches]
    assert all(len(b) * w <= 4096 for b, w in zip(batches, widths, strict=True))
    fill = sum(int(lengths[i]) for b in batches for i in b) / sum(
        len(b) * w for b, w in zip(batches, widths, strict=True))
    assert fill > 0.85, fill
    share = np.mean([i < 1000 for b in batches for i in b])
    assert abs(share - 0.5) < 0.05  # task weights hold per row
    again = TaskBalancedSampler(data, [1.0, 1.0], 4096, 512, 3, 300, start=200)
    assert batches[123] == again.batch(123)


def test_few_shot_rows_stratified_and_seeded(planted: Path) -> None:
    from ehrfm.train.finetune_run import few_shot_rows, task_datasets

    ds = task_datasets(TokenPaths(planted / "tokens"), ["bin_b"], "train")[0]
    y = np.array([ds[i]["label"] for i in range(len(ds))])
    rows = few_shot_rows(ds, "binary", 8, seed=1)
    assert len(rows) == 8 and len(set(rows.tolist())) == 8
    assert 1 <= y[rows].sum() < 8  # the rare class is present, not everything
    assert np.array_equal(rows, few_shot_rows(ds, "binary", 8, seed=1))
    assert not np.array_equal(rows, few_shot_rows(ds, "binary", 8, seed=2))
    assert len(few_shot_rows(ds, "binary", 10_000, seed=0)) == len(ds)


def test_mtf_trains_selects_heads_and_predicts_in_contract(planted: Path, tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from ehrfm.evaluate import build_report
    from ehrfm.train.predict import FinetunedModel, predict
    from ehrfm.train.stage import run_finetune

    layout = _layout(planted, tmp_path)
    run = layout.finetune_run
    losses: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):  # type: ignore[no-untyped-def]
            losses.append(float(outputs["loss"]))

    # Platt forced (auto may keep raw scores on 80 tuning rows): the calibrated path is exercised for sure
    summary = run_finetune(_cfg(80, **{"calibration.method": "platt"}), layout, callbacks=[Record()])
    assert summary.global_step == 80 and summary.tasks == sorted(TASKS) and summary.max_len == MAX_LEN
    assert np.mean(losses[-15:]) < 0.85 * np.mean(losses[:15])
    assert summary.tuning["bin_a"]["auroc"] > 0.7  # the planted signal was learnt (80 tuning rows)
    assert FinetuneSummary.from_dict(json.loads(run.summary.read_text())).global_step == 80
    assert FinetuneConfig.load(run.config).tasks == sorted(TASKS)  # the resolved task list is recorded
    fm = FinetunedModel.load(run.root)
    assert set(fm.heads.heads) == {"bin_a", "bin_b", "tte_c"}  # forecast reads the LM head
    assert fm.heads.heads["bin_a"] is not fm.heads.heads["bin_b"]
    preds = pd.read_parquet(run.predictions)
    again = predict(run.model, layout.token_paths.root, ["bin_a"], ["held_out"], progress=False)
    merged = preds[(preds.task == "bin_a") & (preds.split == "held_out")].merge(again, on=["subject_id",
                                                                                         "prediction_time"])
    np.testing.assert_allclose(merged["prob_x"], merged["prob_y"], atol=1e-6)  # reloaded model == trained one
    assert list(preds.columns[:5]) == ["subject_id", "prediction_time", "task", "split", "model"]
    assert set(preds["model"]) == {"ehrfm_mamba2"} and set(preds["split"]) == {"tuning", "held_out"}
    tte = preds[preds.task == "tte_c"]
    surv = np.stack(list(tte["survival"]))
    assert surv.shape[1] == 5 and np.all(np.diff(surv, axis=1) <= 0) and np.allclose(surv[:, 0], 1.0)
    np.testing.assert_allclose(tte["risk"], 1 - surv[:, -1])
    fc = preds[preds.task == "fc_d"]
    assert all(len(c) == 10 and all(x.startswith("DIAGNOSIS//") for x in c) for c in fc["topk_codes"])
    assert all(np.all(np.diff(p) <= 0) for p in fc["topk_probs"])
    report = build_report(preds, layout.labels_dir, layout.meds_paths.root, list(TASKS), tmp_path / "report",
                          [], None, progress=False)
    assert report.tasks["bin_a"].models["ehrfm_mamba2"].metrics["auroc"].value > 0.65
    assert report.tasks["tte_c"].models["ehrfm_mamba2"].n == int((preds.task == "tte_c").sum() / 2)
    assert report.prediction_tasks_without_labels == []
    _check_calibration(fm, run.model, preds, summary, layout)


def _check_calibration(fm: Any, model_dir: Path, preds: pd.DataFrame, summary: FinetuneSummary,
                       layout: Layout) -> None:
    """calibration.json was fitted on the tuning rows, is saved with the model, and predict_batch applies it
    (monotone: AUROC of prob and prob_raw equal); the raw scores stay in the batch predictions."""
    from ehrfm.evaluate.binary import auroc
    from ehrfm.train.calibration import Calibration
    from ehrfm.train.predict import predict_batch, task_batches

    assert (model_dir / "calibration.json").exists() and fm.calibration is not None
    assert set(fm.calibration.tasks) == set(TASKS) == set(summary.calibration)
    assert fm.calibration.to_dict() == Calibration.load(model_dir).to_dict()  # type: ignore[union-attr]
    assert fm.calibration.get("fc_d").temperature > 0
    methods = {t: c["method"] for t, c in summary.calibration.items()}
    assert (methods["bin_a"], methods["bin_b"], methods["fc_d"]) == ("platt", "platt", "temperature")
    assert methods["tte_c"].split(",")[0] == "platt"  # a late edge without known events may stay raw
    for task in ("bin_a", "bin_b"):
        b = preds[(preds.task == task)]
        assert b["prob"].between(0, 1).all() and b["prob_raw"].notna().all()
        y = _labels(layout, task, b)
        assert auroc(y, b["prob"].to_numpy()) == pytest.approx(auroc(y, b["prob_raw"].to_numpy()), abs=1e-12)
    spec = next(s for s in fm.specs if s.task == "bin_a")
    ds, idx, batch = next(task_batches(fm, layout.token_paths.root, "bin_a", "held_out", 4096))
    served = predict_batch(fm, spec, batch)  # what the server and Spark scoring call
    assert set(served) == {"prob"}
    raw_fm = dataclasses.replace(fm, calibration=None)
    raw = np.asarray(predict_batch(raw_fm, spec, batch)["prob"])
    cal = fm.calibration.get("bin_a")
    np.testing.assert_allclose(served["prob"], cal.prob(raw), atol=1e-9)
    assert not np.allclose(served["prob"], raw)
    tte_spec = next(s for s in fm.specs if s.task == "tte_c")
    _, _, tb = next(task_batches(fm, layout.token_paths.root, "tte_c", "held_out", 4096))
    surv = np.asarray(predict_batch(fm, tte_spec, tb)["survival"])
    assert np.all(np.diff(surv, axis=1) <= 1e-12) and np.allclose(surv[:, 0], 1.0)


def _labels(layout: Layout, task: str, rows: pd.DataFrame) -> np.ndarray:
    lab = pd.read_parquet(layout.label_table(task))
    lab["prediction_time"] = pd.to_datetime(lab["prediction_time"])
    j = rows.merge(lab, on=["subject_id", "prediction_time"], how="left")
    return j["boolean_value"].astype(float).to_numpy()


def test_pretrained_model_shorter_than_the_tokens_is_refused(planted: Path, tmp_path: Path) -> None:
    from ehrfm.train.stage import run_finetune

    layout = _layout(planted, tmp_path, model_max_len=32)  # the tokens' rows were cut at 64
    model_config = layout.pretrain_run.model / "config.yaml"
    with pytest.raises(ConfigError, match=rf"model\.max_len=32 \({model_config}\) < max_len=64 of the tokens "
                                          rf"\({layout.token_paths.meta}\)"):
        run_finetune(_cfg(2, tasks=["bin_a"]), layout)
    assert not layout.finetune_run.root.exists()


def test_shared_head_is_one_module() -> None:
    from ehrfm.train.heads import HeadSpec, TaskHeads

    specs = [HeadSpec("a", "binary"), HeadSpec("b", "binary"), HeadSpec("c", "tte")]
    heads = TaskHeads(specs, 16, shared_head=True)
    assert heads.heads["a"] is heads.heads["b"] and heads.heads["c"] is not heads.heads["a"]


def test_cli_lora_few_shot_nested_mlflow(planted: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    from ehrfm.cli import main
    from ehrfm.tracking import Tracker

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    layout = _layout(planted, tmp_path)
    # a pretraining run with a tracked run id in the layout's store, as `ehrfm pretrain` leaves it
    pre = Tracker(layout.root_dir, "ehrfm-pretrain", layout.tracking_uri(), layout.mlflow_artifacts)
    parent = pre.start_run("pretrain")
    layout.pretrain_run.summary.write_text(json.dumps({"mlflow_run_id": parent}))
    flags = [f"--{k}" if i % 2 == 0 else k for i, k in enumerate([
        "root", str(tmp_path), "tokens", layout.token_paths.root, "labels", layout.labels_dir, "meds",
        layout.meds_paths.root])]
    assert main(["finetune", *map(str, flags), "--tasks", "[bin_a,tte_c]", "--adapt.mode", "lora",
                 "--adapt.few_shot", "16", "--trainer.max_steps", "6", "--trainer.val_check_interval", "3",
                 "--data.max_tokens", "640", "--trainer.progress_bar", "false", "--evaluate", "true",
                 "--report.n_boot", "0"]) == 0
    summary = FinetuneSummary.from_dict(json.loads(layout.finetune_run.summary.read_text()))
    assert summary.mode == "lora" and summary.train_rows == {"bin_a": 16, "tte_c": 16}
    assert 0 < summary.lora_parameters < summary.trainable_parameters < 20_000
    assert {(r.task, r.metric) for r in summary.report} == {("bin_a", "auroc"), ("tte_c", "harrell_c")}
    run = MlflowClient(layout.tracking_uri()).get_run(summary.mlflow_run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent == summary.mlflow_parent_run_id
    assert any(k.startswith("heldout_auroc/bin_a") for k in run.data.metrics)
    assert run.data.tags["calibration/bin_a"] == summary.calibration["bin_a"]["method"]
    assert "calibration_log_loss_raw/bin_a" in run.data.metrics
    assert (layout.evaluation_dir / "report.md").exists()
    state = EHRFoundationModel.from_pretrained(layout.finetune_run.model).state_dict()
    assert not any("lora" in k for k in state)  # merged: loads without LoRA code
