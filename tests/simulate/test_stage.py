"""``ehrfm simulate`` end to end on rows the real tokenizer wrote from hand-made MEDS events (inpatient stays,
labs, deaths) and a randomly initialised pretrained model: predictions in the evaluation contract for every
simulable task, reproducible by seed, picked up by ``ehrfm evaluate`` beside the other models; forecast tasks
skipped (or refused when asked for), a missing model refused; the CLI runs it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ehrfm.cli import main
from ehrfm.config.base import ConfigError
from ehrfm.config.evaluate import EvaluateConfig, ReportConfig
from ehrfm.config.simulate import SimulateConfig
from ehrfm.config.tokenize import TokenizerConfig
from ehrfm.evaluate.stage import run as evaluate
from ehrfm.labels import load_tasks
from ehrfm.labels.direct import label_events
from ehrfm.labels.tables import write_labels
from ehrfm.layout import Layout
from ehrfm.models import EHRFoundationModel, ModelConfig
from ehrfm.prepare.bins import fit_bins_pandas
from ehrfm.prepare.vocab import build_vocab
from ehrfm.schema import TOKENS_SCHEMA
from ehrfm.simulate.stage import run
from ehrfm.tokenize.tokenizer import rows_to_frame, tokenize_subject

TASKS = ["readmission_30d", "mortality_inhospital", "los_gt_7d", "death_1y_tte", "next_visit_codes"]
KINDS = {"readmission_30d": "binary", "mortality_inhospital": "binary", "los_gt_7d": "binary",
         "death_1y_tte": "time_to_event", "next_visit_codes": "forecast"}
SIMULATED = TASKS[:4]
T0 = pd.Timestamp("2020-01-01")


def _split(sid: int) -> str:
    return "train" if sid % 10 < 6 else ("tuning" if sid % 10 < 8 else "held_out")


def _events(n: int, seed: int = 0) -> pd.DataFrame:
    """Subjects with 2-4 inpatient stays (labs every 2 days, a diagnosis), a few in-stay deaths, and an
    ambulatory visit after the last stay (follow-up)."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[int, pd.Timestamp | None, str, float, str | None]] = []
    for sid in range(n):
        rows.append((sid, T0 - pd.Timedelta(days=365 * 60), "MEDS_BIRTH", np.nan, None))
        t = T0 + pd.Timedelta(days=int(rng.integers(0, 60)))
        for k in range(int(rng.integers(2, 5))):
            enc, los = f"{sid}-{k}", float(rng.uniform(1.5, 12.0))
            rows += [(sid, t, "ENCOUNTER//INPATIENT//START", np.nan, enc),
                     (sid, t, f"DIAGNOSIS//D{int(rng.integers(0, 4))}", np.nan, enc)]
            for d in np.arange(0.1, los, 2.0):
                value = float(rng.lognormal(0, 0.4))
                rows.append((sid, t + pd.Timedelta(days=float(d)), "LAB//CR", value, enc))
            end = t + pd.Timedelta(days=los)
            rows.append((sid, end, "ENCOUNTER//INPATIENT//END", np.nan, enc))
            if rng.random() < 0.1:
                rows.append((sid, end, "MEDS_DEATH", np.nan, enc))
                break
            t = end + pd.Timedelta(days=float(rng.uniform(3.0, 90.0)))
        else:
            rows += [(sid, t, "ENCOUNTER//AMBULATORY//START", np.nan, f"{sid}-a"),
                     (sid, t + pd.Timedelta(minutes=30), "ENCOUNTER//AMBULATORY//END", np.nan, f"{sid}-a")]
    return pd.DataFrame(rows, columns=["subject_id", "time", "code", "numeric_value", "encounter_id"]).astype(
        {"numeric_value": "float32"})


def _pipeline(root: Path, n: int = 80) -> Layout:
    """meds/, labels/, tokens/ and runs/pretrain/model of ``n`` subjects (tokens by the real tokenizer)."""
    layout = Layout(root=str(root))
    events = _events(n)
    splits = pd.DataFrame({"subject_id": np.arange(n, dtype=np.int64),
                           "split": [_split(i) for i in range(n)]})
    meds = layout.meds_paths
    meds.metadata.mkdir(parents=True)
    splits.to_parquet(meds.subject_splits, index=False)
    for split, part in events.assign(split=events.subject_id.map(_split)).groupby("split"):
        (meds.data / str(split)).mkdir(parents=True)
        part.drop(columns="split").to_parquet(meds.data / str(split) / "0.parquet", index=False)
    labels = label_events(events, load_tasks(TASKS))
    for task, table in labels.items():
        write_labels(table, KINDS[task], layout.labels_dir, task)
    train = events[events.subject_id.map(_split) == "train"]
    counts = {str(k): int(v) for k, v in train["code"].value_counts().items() if k != "MEDS_BIRTH"}
    vocab = build_vocab(counts, min_count=1, n_bins=4, tasks=TASKS)
    bins = fit_bins_pandas(events, splits, n_bins=4, min_count=5)
    lab = pd.concat([t.to_pandas().assign(task=name) for name, t in labels.items()], ignore_index=True)
    rows = []
    for sid, ev in events.groupby("subject_id"):
        rows += tokenize_subject(ev, vocab, bins, TokenizerConfig(max_len=128),
                                 labels=lab[lab.subject_id == sid], split=_split(int(sid)))
    frame = rows_to_frame(rows)
    tokens = layout.token_paths
    tokens.pretrain.mkdir(parents=True)
    vocab.save(tokens.vocab)
    pq.write_table(pa.Table.from_pandas(frame[frame.task.isna()], schema=TOKENS_SCHEMA, preserve_index=False),
                   tokens.pretrain / "part-0.parquet")
    for task in TASKS:
        tokens.task(task).mkdir(parents=True)
        pq.write_table(pa.Table.from_pandas(frame[frame.task == task], schema=TOKENS_SCHEMA,
                                            preserve_index=False), tokens.task(task) / "part-0.parquet")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(vocab), backbone="mamba2", d_model=32, n_layers=1, headdim=16,
                      chunk_size=16, max_len=128, dropout=0.0, use_code_counts=True, use_value_deltas=True)
    model_dir = EHRFoundationModel(cfg).save_pretrained(layout.pretrain_run.model)
    vocab.save(model_dir / "vocab.json")
    return layout


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    return _pipeline(tmp_path_factory.mktemp("sim"))


def _cfg(**kw: object) -> SimulateConfig:
    return SimulateConfig(**{"samples": 4, "max_steps": 48, "progress": False, **kw})  # type: ignore[arg-type]


def test_predictions_in_the_contract_and_reproducible(layout: Layout) -> None:
    summary = run(_cfg(), layout)
    assert summary.model_name == "zero_shot_m4" and set(summary.tasks) == set(SIMULATED)
    assert "next_visit_codes" in summary.skipped_tasks and summary.gap_fit_tokens > 0
    preds = pd.read_parquet(summary.predictions)
    assert set(preds.model) == {"zero_shot_m4"} and set(preds.split) == {"tuning", "held_out"}
    labels = pd.concat([pd.read_parquet(layout.label_table(t)).assign(task=t) for t in SIMULATED])
    labels = labels[labels.subject_id.map(_split) != "train"]
    for task in SIMULATED:  # one prediction per tuning / held-out label row
        got = preds[preds.task == task][["subject_id", "prediction_time"]]
        want = labels[labels.task == task][["subject_id", "prediction_time"]]
        assert len(got) == len(want) > 0 and got.merge(want).shape[0] == len(want)
        assert summary.tasks[task].futures == 4 * len(want)
    binary = preds[preds.task != "death_1y_tte"]
    assert binary.prob.between(0, 1).all() and (binary.prob_ci_low <= binary.prob).all()
    assert (binary.prob <= binary.prob_ci_high).all() and (binary.n_futures <= 4).all()
    assert np.allclose(binary.prob, binary.n_positive / binary.n_futures)
    tte = preds[preds.task == "death_1y_tte"]
    assert tte.risk.between(0, 1).all() and all(len(s) == 12 for s in tte.survival)
    assert np.allclose([s[-1] for s in tte.survival], 1 - tte.risk)
    again = pd.read_parquet(run(_cfg(), layout).predictions)
    pd.testing.assert_frame_equal(preds, again)
    other = pd.read_parquet(run(_cfg(seed=1, model_name="zero_shot_m4_seed1"), layout).predictions)
    assert not np.array_equal(other.n_positive.to_numpy(), preds.n_positive.to_numpy())


def test_evaluate_reports_the_zero_shot_model_beside_the_others(layout: Layout, tmp_path: Path) -> None:
    run(_cfg(tasks=["readmission_30d", "los_gt_7d"], max_rows=6, splits=["held_out"], model_name="zs_small"),
        layout)
    lay = Layout(root=layout.root, evaluation=str(tmp_path / "ev"))
    summary = evaluate(EvaluateConfig(tasks=["readmission_30d", "los_gt_7d"], report=ReportConfig(n_boot=0),
                                      progress=False), lay)
    models = {(r.task, r.model): r.n for r in summary.primary}
    assert models[("readmission_30d", "zs_small")] == 6 and models[("los_gt_7d", "zs_small")] == 6
    assert ("readmission_30d", "zero_shot_m4") in models  # every finished simulation run, side by side


def test_refusals(layout: Layout, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="next_visit_codes.*kind: forecast"):
        run(_cfg(tasks=["next_visit_codes"]), layout)
    with pytest.raises(ConfigError, match="no token rows for \\['nope'\\]"):
        run(_cfg(tasks=["nope"]), layout)
    with pytest.raises(FileNotFoundError, match="no model.pt"):
        run(_cfg(pretrained=str(tmp_path)), layout)
    with pytest.raises(ConfigError, match="samples=0"):
        _cfg(samples=0)


def test_cli(layout: Layout) -> None:
    argv = ["simulate", "--root", layout.root, "--tasks", "[mortality_inhospital]", "--samples", "2",
            "--max_steps", "16", "--splits", "[held_out]", "--progress", "false"]
    assert main(argv) == 0
    preds = pd.read_parquet(layout.simulate_run("zero_shot_m2").predictions)
    assert set(preds.task) == {"mortality_inhospital"} and (preds.n_futures <= 2).all()
