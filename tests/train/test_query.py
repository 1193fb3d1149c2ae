"""Query-conditioned pretraining (ehrfm/train/query.py): answers vs a brute-force twin (censoring, death),
no leakage from after the cut, the pretrain option on every backbone, held-out codes never sampled, CLI
checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from ehrfm.cli import main
from ehrfm.config.base import ConfigError
from ehrfm.config.model import ModelConfig
from ehrfm.config.train import PretrainConfig, QueryConfig
from ehrfm.labels.parse import load_task
from ehrfm.layout import Layout
from ehrfm.models import EHRFoundationModel
from ehrfm.resources import preset_path
from ehrfm.schema import DEATH_CODE, PAD_ID, SPECIAL_TOKENS
from ehrfm.simulate.rules import OutcomeRule
from ehrfm.train.query import (
    NEGATIVE,
    POSITIVE,
    UNKNOWN,
    HeldOutQuery,
    QueryBatch,
    QuerySampler,
    TaskQuery,
    answer_frame,
    answers,
    cut_candidates,
    heldout_codes,
    heldout_queries,
    horizon_index,
    predict_task_rows,
    target_codes,
    task_query,
    write_task_predictions,
)
from ehrfm.train.stage import run_pretrain
from ehrfm.vocab import Vocabulary

HORIZONS = [1.0, 7.0, 30.0]
BACKBONES = ("mamba", "mamba2", "mamba3", "transformer")
TINY: dict[str, Any] = {
    "model.d_model": 16, "model.n_layers": 1, "model.d_state": 4, "model.headdim": 8, "model.n_heads": 2,
    "model.chunk_size": 16, "data.max_tokens": 256, "data.pool_size": 32, "trainer.progress_bar": False,
    "optim.warmup_steps": 1, "tracking.enabled": False, "trainer.max_steps": 2,
    "trainer.val_check_interval": 1, "trainer.limit_val_batches": 2, "query.weight": 1.0,
}


def _brute(ids: list[int], times: list[float], cut: int, targets: set[int], horizon: float,
           death: int) -> int:
    """The definition, one query at a time: positive when a target is timed in (t_cut, t_cut + h]; else
    known when the window ends by the row's last time or the patient dies after the cut."""
    t_cut, t_end = times[cut], times[-1]
    future = list(zip(ids[cut + 1:], times[cut + 1:], strict=True))
    if any(c in targets and t <= t_cut + horizon for c, t in future):
        return POSITIVE
    if t_cut + horizon <= t_end or any(c == death for c, _ in future):
        return NEGATIVE
    return UNKNOWN


def _random_rows(gen: torch.Generator, b: int, width: int, v: int, death: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.randint(7, v, (b, width), generator=gen)
    step = torch.rand(b, width, generator=gen) * 6
    gaps = torch.where(torch.rand(b, width, generator=gen) < 0.5, 0.0, step)
    times = 18000 + gaps.cumsum(1)
    lengths = torch.randint(3, width + 1, (b,), generator=gen)
    for r in range(b):  # some rows end in death
        if r % 3 == 0:
            ids[r, lengths[r] - 1] = death
    ids[torch.arange(width).expand(b, width) >= lengths.unsqueeze(1)] = PAD_ID
    return ids, times.float(), lengths


def test_answers_match_the_brute_force_twin_with_censoring_and_death() -> None:
    gen = torch.Generator().manual_seed(0)
    death, v = 9, 20
    ids, times, lengths = _random_rows(gen, 12, 30, v, death)
    cand = cut_candidates(times, lengths)
    rows, cuts = torch.nonzero(cand, as_tuple=True)
    n = len(rows)
    targets = torch.randint(7, v, (n, 3), generator=gen)
    targets[torch.rand(n, 3, generator=gen) < 0.5] = PAD_ID
    targets[:, 0] = torch.where(torch.rand(n, generator=gen) < 0.2, death, targets[:, 0])  # death as target
    hz = torch.randint(0, len(HORIZONS), (n,), generator=gen)
    got = answers(ids, times, lengths, QueryBatch(rows, cuts, targets, hz), torch.tensor(HORIZONS), death)
    want = []
    for i in range(n):
        r, L = int(rows[i]), int(lengths[rows[i]])
        want.append(_brute(ids[r, :L].tolist(), times[r, :L].double().tolist(), int(cuts[i]),
                           {c for c in targets[i].tolist() if c != PAD_ID}, HORIZONS[int(hz[i])], death))
    assert got.tolist() == want
    assert {POSITIVE, NEGATIVE, UNKNOWN} <= set(want)  # every case was exercised
    # a death after the cut makes a window past the end known (negative), unless death is the target
    dead = [i for i in range(n) if death in ids[rows[i], cuts[i] + 1:].tolist()]
    assert dead and all(want[i] != UNKNOWN for i in dead)


def test_cut_candidates_keep_every_token_of_the_cut_time_in_the_prefix() -> None:
    times = torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 3.0, 0.0]])
    lengths = torch.tensor([7])
    assert torch.nonzero(cut_candidates(times, lengths)[0]).squeeze(1).tolist() == [1, 4, 5]


def _tiny_model(backbone: str, v: int) -> EHRFoundationModel:
    cfg = ModelConfig.from_dict({"vocab_size": v, "backbone": backbone, "d_model": 16, "n_layers": 2,
                                 "d_state": 4, "headdim": 8, "n_heads": 2, "chunk_size": 8, "max_len": 40,
                                 "dropout": 0.0})
    torch.manual_seed(0)
    model = EHRFoundationModel(cfg)
    model.attach_query_head(HORIZONS)
    return model.eval()


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_query_logit_does_not_see_tokens_after_the_cut(backbone: str) -> None:
    v, width, cut = 30, 40, 17
    model = _tiny_model(backbone, v)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(7, v, (2, width), generator=gen)
    times = torch.linspace(18000, 18100, width).expand(2, width).clone()
    targets = torch.tensor([[8, 9, PAD_ID], [10, PAD_ID, PAD_ID]])
    hz = torch.tensor([0, 2])

    def logit(ids: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = model(ids, times=times, return_logits=False).hidden
            return model.query_logits(h[:, cut], targets, hz)

    base = logit(ids, times)
    changed_ids = ids.clone()
    changed_ids[:, cut + 1:] = torch.randint(7, v, (2, width - cut - 1), generator=gen)
    changed_times = times.clone()
    changed_times[:, cut + 1:] += 50.0
    torch.testing.assert_close(logit(changed_ids, changed_times), base, rtol=0, atol=1e-5)
    changed_ids[:, cut] = (changed_ids[:, cut] + 1 - 7) % (v - 7) + 7  # the cut's own token does count
    assert not torch.allclose(logit(changed_ids, changed_times), base)


def test_heldout_codes_are_never_sampled_and_protected_codes_never_held_out() -> None:
    tokens = [*SPECIAL_TOKENS, "[W0]", "GENDER//F", DEATH_CODE, "ENCOUNTER//INPATIENT//START",
              "ENCOUNTER//INPATIENT//END", *[f"DIAGNOSIS//X{i}" for i in range(60)]]
    vocab = Vocabulary(tokens, {t: i + 1 for i, t in enumerate(tokens)})
    cfg = QueryConfig(weight=1.0, holdout_mod=4, max_set_size=3, set_prob=0.5)
    held = set(heldout_codes(vocab, cfg.holdout_mod))
    assert 5 <= len(held) <= 30
    assert not {vocab.id(DEATH_CODE), vocab.id("ENCOUNTER//INPATIENT//START"), vocab.id("GENDER//F")} & held
    assert vocab.id("GENDER//F") not in target_codes(vocab) and vocab.id("[W0]") not in target_codes(vocab)
    sampler = QuerySampler(vocab, cfg)
    times = torch.arange(40, dtype=torch.float32).expand(8, 40).clone()
    gen = torch.Generator().manual_seed(0)
    seen: set[int] = set()
    for _ in range(30):
        q = sampler.sample(times, torch.full((8,), 40), gen)
        seen |= set(torch.unique(q.targets).tolist())
        assert ((q.targets != PAD_ID).sum(1) >= 1).all()
    assert not seen & held
    assert len(seen - {PAD_ID}) > 0.8 * (len(target_codes(vocab)) - len(held))  # the rest are all drawn
    names = heldout_queries(vocab, cfg)
    assert {q.code for q in names} == held and len(names) == 3 * len(held)


def test_our_tasks_as_queries() -> None:
    tokens = [*SPECIAL_TOKENS, DEATH_CODE, "ENCOUNTER//INPATIENT//START", "ENCOUNTER//INPATIENT//END",
              "ENCOUNTER//AMBULATORY//END", "DIAGNOSIS//X"]
    vocab = Vocabulary(tokens)
    horizons = [1.0, 7.0, 30.0, 90.0, 365.0]
    q = {t: task_query(OutcomeRule.from_spec(load_task(t), vocab), vocab, horizons)
         for t in ("readmission_30d", "mortality_inhospital", "los_gt_7d", "mortality_30d_post_discharge")}
    assert q["readmission_30d"].targets == [vocab.id("ENCOUNTER//INPATIENT//START")]
    assert horizons[q["readmission_30d"].horizon_idx] == 30 and not q["readmission_30d"].negate
    assert q["mortality_inhospital"].targets == [vocab.id(DEATH_CODE)]
    assert horizons[q["mortality_inhospital"].horizon_idx] == 7
    assert q["los_gt_7d"].negate and horizons[q["los_gt_7d"].horizon_idx] == 7
    assert set(q["los_gt_7d"].targets) == {vocab.id("ENCOUNTER//INPATIENT//END"),
                                           vocab.id("ENCOUNTER//AMBULATORY//END")}
    assert horizon_index(horizons, 6.0) == 1 and horizon_index(horizons, 200.0) == 4


@pytest.mark.parametrize("backbone", BACKBONES)
def test_pretrain_with_queries_runs_and_saves_the_head(backbone: str, standin_tokens: Path,
                                                       tmp_path: Path) -> None:
    cfg = PretrainConfig().replace(**TINY, **{"model.backbone": backbone})
    layout = Layout(root=str(tmp_path), tokens=str(standin_tokens))
    summary = run_pretrain(cfg, layout)
    assert summary.global_step == 2 and summary.train_loss is not None
    model = EHRFoundationModel.from_pretrained(layout.pretrain_run.model)
    assert model.query_head is not None
    assert model.query_head.horizons_days.tolist() == cfg.query.horizons
    assert PretrainConfig.load(layout.pretrain_run.config).query == cfg.query


def test_plain_pretraining_has_no_query_head(standin_tokens: Path, tmp_path: Path) -> None:
    cfg = PretrainConfig().replace(**{**TINY, "query.weight": 0.0})
    layout = Layout(root=str(tmp_path), tokens=str(standin_tokens))
    run_pretrain(cfg, layout)
    model = EHRFoundationModel.from_pretrained(layout.pretrain_run.model)
    assert model.query_head is None
    with pytest.raises(ValueError, match="no query head"):
        model.query_logits(torch.zeros(1, 16), torch.zeros(1, 1, dtype=torch.long), torch.zeros(1).long())


@pytest.mark.parametrize(("flag", "value", "msg"), [
    ("query.weight", "-1", "query.weight=-1.0: must be >= 0"),
    ("query.horizons", "[30,7]", r"query.horizons=\[30.0, 7.0\]: must be distinct positive days"),
    ("query.set_prob", "2", r"query.set_prob=2.0: must be in \[0, 1\]"),
    ("query.cuts_per_row", "0", "query.cuts_per_row=0: must be >= 1"),
])
def test_cli_checks_the_query_options(flag: str, value: str, msg: str, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "--root", str(tmp_path), f"--{flag}", value]) == 2
    assert msg.replace("\\", "").split(":")[0] in capsys.readouterr().err
    with pytest.raises(ConfigError, match=msg):
        PretrainConfig.load(preset_path("pretrain", "tiny"), [f"{flag}={value}"])


def test_zero_shot_answers_read_the_last_token_and_the_cut() -> None:
    v = 30
    model = _tiny_model("mamba2", v)
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(7, v, (3, 24), generator=gen)
    times = torch.arange(24, dtype=torch.float32).expand(3, 24) * 2 + 18000
    lengths = torch.tensor([24, 20, 12])
    batch = {"concept_ids": ids, "times": times, "lengths": lengths}
    tq = TaskQuery("t", [8, 9], 1, False, "")
    p = predict_task_rows(model, batch, tq)
    with torch.no_grad():
        h = model(ids, times=times, return_logits=False).hidden
        want = torch.sigmoid(model.query_logits(h[torch.arange(3), lengths - 1], torch.tensor([[8, 9]] * 3),
                                                torch.tensor([1, 1, 1])))
    torch.testing.assert_close(p, want)
    torch.testing.assert_close(predict_task_rows(model, batch, TaskQuery("t", [8, 9], 1, True, "")), 1 - want)
    queries = [HeldOutQuery("a", 10, 0), HeldOutQuery("b", 11, 2)]
    cols = answer_frame(model, batch, [5, 6, 7], queries, 2, torch.Generator().manual_seed(0), None)
    assert set(cols["query"]) <= {"a", "b"} and set(cols["subject_id"]) <= {5, 6, 7}
    assert set(cols["label"]) <= {0, 1} and len(cols["prob"]) == len(cols["label"]) > 0
    assert all(c >= 0 for c in cols["prior_count"])


def test_write_task_predictions_writes_an_evaluate_model(tmp_path: Path) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ehrfm.schema import TOKENS_SCHEMA, TokenType, task_token

    task = "readmission_30d"
    tokens = [*SPECIAL_TOKENS, task_token(task), DEATH_CODE, "ENCOUNTER//INPATIENT//START",
              "ENCOUNTER//INPATIENT//END", "DIAGNOSIS//X"]
    vocab = Vocabulary(tokens)
    layout = Layout(root=str(tmp_path), tokens=str(tmp_path / "tokens"))
    layout.token_paths.task(task).mkdir(parents=True)
    vocab.save(layout.token_paths.vocab)
    body = [vocab.id(t) for t in ("[VS]", "ENCOUNTER//INPATIENT//START", "DIAGNOSIS//X",
                                  "ENCOUNTER//INPATIENT//END", "[VE]")]
    rows: dict[str, list[Any]] = {f.name: [] for f in TOKENS_SCHEMA}
    for sid in range(4):
        ids = [vocab.id(task_token(task)), *body[: 3 + sid % 3], vocab.id(task_token(task))]
        n = len(ids)
        rows["subject_id"].append(sid)
        rows["split"].append("held_out")
        rows["task"].append(task)
        rows["prediction_time"].append(pd.Timestamp("2020-01-01") + pd.Timedelta(days=sid))
        rows["length"].append(n)
        rows["concept_ids"].append(ids)
        rows["type_ids"].append([TokenType.TASK] + [TokenType.CODE] * (n - 2) + [TokenType.TASK])
        for k, v in (("ages", 50.0), ("times", 18000.0 + sid), ("visit_orders", 1), ("visit_segments", 1),
                     ("values", float("nan"))):
            rows[k].append([v] * n)
        rows["label"].append(float(sid % 2))
        for k in ("duration_days", "event", "target_ids"):
            rows[k].append(None)
    pq.write_table(pa.Table.from_pydict(rows, schema=TOKENS_SCHEMA),
                   layout.token_paths.task(task) / "part-0.parquet")
    model = _tiny_model("mamba2", len(vocab))
    model.save_pretrained(tmp_path / "model")
    summary = write_task_predictions(layout, tmp_path / "model", [task], ["held_out", "tuning"], "qz")
    preds = pd.read_parquet(layout.simulate_run("qz").predictions)
    assert len(preds) == 4 and set(preds["model"]) == {"qz"} and preds["prob"].between(0, 1).all()
    assert list(preds["subject_id"]) == [0, 1, 2, 3] and layout.simulate_run("qz").summary.exists()
    assert "30 d" in summary["queries"][task]
    assert layout.simulate_predictions() == [layout.simulate_run("qz").predictions]  # evaluate finds it
