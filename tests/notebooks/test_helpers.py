"""Fast tests of ``ehrfm.notebook`` helpers: pipeline caching (steps faked), token decoding, visit prefixes,
padding-invariant embeddings, outlier scores. The notebooks themselves run in test_notebooks.py (slow)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from ehrfm.models import EHRFoundationModel, ModelConfig
from ehrfm.notebook import embed, pipeline, tables
from ehrfm.schema import SPECIAL_TOKENS, TokenType
from ehrfm.vocab import Vocabulary


@pytest.fixture
def fake_cli(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Replace the child ``ehrfm`` processes by a recorder (exit 1 for a step named in EHRFM_TEST_FAIL)."""
    calls: list[str] = []

    def call(cmd: list[str], stdout: Any, **_: Any) -> int:
        calls.append(cmd[3])  # [python, -m, ehrfm.cli, <stage>, ...]
        stdout.write(f"ran {cmd[3]}\nboom\n")
        return 1 if os.environ.get("EHRFM_TEST_FAIL") == cmd[3] else 0

    monkeypatch.setattr(subprocess, "call", call)
    return calls


def test_pipeline_caches_steps_and_reruns_what_a_setting_changes(tmp_path: Path, fake_cli: list[str]) -> None:
    s = pipeline.Settings(workdir=tmp_path, n_patients=50, pretrain_steps=2, finetune_steps=2)
    _, first = pipeline.ensure_pipeline(s, echo=None)
    assert fake_cli == ["synth", "ingest", "label", "prepare", "tokenize", "pretrain", "finetune"]
    assert set(first["status"]) == {"ran"}
    _, again = pipeline.ensure_pipeline(s, echo=None)
    assert set(again["status"]) == {"cached"} and len(fake_cli) == 7
    more = pipeline.Settings(workdir=tmp_path, n_patients=50, pretrain_steps=5, finetune_steps=2)
    _, changed = pipeline.ensure_pipeline(more, echo=None)
    assert fake_cli[7:] == ["pretrain", "finetune"]
    assert list(changed["status"]) == ["cached"] * 5 + ["ran"] * 2
    _, no_ft = pipeline.ensure_pipeline(pipeline.Settings(tmp_path, 50, pretrain_steps=5, finetune_steps=0),
                                        echo=None)
    assert no_ft["status"].iloc[-1] == "skipped"


def test_pipeline_failure_names_step_and_log(tmp_path: Path, fake_cli: list[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHRFM_TEST_FAIL", "label")
    with pytest.raises(RuntimeError, match=r"step 'label' failed \(exit 1\).*label\.log:\nran label\nboom"):
        pipeline.ensure_pipeline(pipeline.Settings(workdir=tmp_path, n_patients=50), echo=None)
    assert not (tmp_path / ".done" / "label.json").exists()
    assert (tmp_path / ".done" / "ingest.json").exists()


def test_settings_from_env_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EHRFM_NB_WORKDIR", str(tmp_path))
    monkeypatch.setenv("EHRFM_NB_PATIENTS", "many")
    with pytest.raises(ValueError, match="EHRFM_NB_PATIENTS='many'"):
        pipeline.Settings.from_env()
    monkeypatch.setenv("EHRFM_NB_PATIENTS", "300")
    assert pipeline.Settings.from_env().n_patients == 300
    assert "sqlite:///" in pipeline.mlflow_ui_command(tmp_path)


def _vocab() -> Vocabulary:
    return Vocabulary.build(["[W0]", "[Q1]"], {"DIAGNOSIS//ICD//10//I10": 3, "LAB//LOINC//2160-0": 2})


def _row(ids: list[int], visits: list[int]) -> dict[str, Any]:
    n = len(ids)
    return {"subject_id": 7, "concept_ids": np.array(ids), "type_ids": np.full(n, TokenType.CODE),
            "ages": np.full(n, 50.0, dtype=np.float32), "times": np.arange(n, dtype=np.float32) + 19000,
            "visit_orders": np.array(visits), "visit_segments": np.ones(n, dtype=np.int64),
            "values": np.where(np.arange(n) % 3 == 1, 0.3, np.nan).astype(np.float32)}


def test_decode_row_maps_ids_back_to_tokens() -> None:
    v = _vocab()
    ids = [v.id("[CLS]"), v.id("[VS]"), v.id("DIAGNOSIS//ICD//10//I10"), v.id("LAB//LOINC//2160-0"),
           v.id("[Q1]")]
    t = tables.decode_row(_row(ids, [0, 1, 1, 1, 1]), v)
    assert t["token"].tolist() == ["[CLS]", "[VS]", "DIAGNOSIS//ICD//10//I10", "LAB//LOINC//2160-0", "[Q1]"]
    assert t["date"].iloc[0] == pd.Timestamp("2022-01-08")  # day 19000 since 1970
    assert tables.code_family("LAB//LOINC//2160-0") == "LAB" and tables.code_family("[Q1]") == "VALUE_BIN"


def test_visit_prefixes_end_after_each_visit() -> None:
    row = _row(list(range(7, 17)), [0, 1, 1, 1, 1, 2, 2, 2, 3, 3])
    prefixes, visits = embed.visit_prefixes(row)
    assert [len(p["concept_ids"]) for p in prefixes] == [5, 8, 10] and visits == [1, 2, 3]
    few, few_visits = embed.visit_prefixes(row, max_points=2)
    assert [len(p["concept_ids"]) for p in few] == [5, 10] and few_visits == [1, 3]


def test_embed_is_the_last_real_token_state_whatever_the_padding() -> None:
    torch.manual_seed(0)
    model = EHRFoundationModel(ModelConfig(vocab_size=len(SPECIAL_TOKENS) + 20, d_model=16,
                                           n_layers=1)).eval()
    rng = np.random.default_rng(0)
    rows = [_row(list(rng.integers(7, 27, n)), [1] * n) for n in (5, 13, 21)]
    together = embed.embed(model, rows, batch_size=3)
    alone = np.concatenate([embed.embed(model, [r]) for r in rows])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    full = model(**{k: torch.as_tensor(np.asarray(rows[1][k])[None]) for k in tables.STREAMS},
                 return_logits=False).hidden
    np.testing.assert_allclose(together[1], full[0, -1].detach().numpy(), atol=1e-5)


def test_outlier_scores_rank_a_planted_outlier_first() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 4))
    emb[17] += 12.0
    assert int(np.argmax(embed.outlier_scores(emb, k=5))) == 17
