"""``ehrfm explain`` on a hand-made pipeline root: outputs where the Layout says, completeness per row, top
codes ranked by mean |attribution| with CIs that hold the estimate, bad task choices refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from explain_fixtures import SPECS, TOKENIZE, finetuned

from ehrfm.cli import main
from ehrfm.config.base import ConfigError
from ehrfm.config.explain import ExplainConfig, IGSettings
from ehrfm.explain.population import top_codes
from ehrfm.explain.stage import run
from ehrfm.layout import Layout
from ehrfm.prepare.bins import Bins
from ehrfm.schema import TIME
from ehrfm.tokenize import tokenize_for_prediction
from ehrfm.tokenize.direct import rows_to_table


@pytest.fixture
def root(tmp_path: Path, events: list[pd.DataFrame], vocab_bins: tuple[Any, Bins]) -> Layout:
    """A layout with a finetuned model and two task rows per patient (held_out and train)."""
    vocab, bins = vocab_bins
    layout = Layout(root=str(tmp_path))
    finetuned(vocab, "mamba").save(layout.finetune_run.model)
    for spec in SPECS:
        rows = []
        for ev in events:
            times = ev[TIME].dropna().sort_values()
            for split, k in (("held_out", 29), ("held_out", 39), ("train", 35)):
                row = tokenize_for_prediction(ev, vocab, bins, TOKENIZE, times.iloc[k], [spec.task])[0]
                rows.append({**row, "split": split})
        folder = layout.token_paths.task(spec.task)
        folder.mkdir(parents=True)
        pq.write_table(rows_to_table(rows), folder / "part-0.parquet")
    return layout


def test_explain_writes_ranked_codes_and_checks_completeness(root: Layout) -> None:
    cfg = ExplainConfig(n_boot=30, top_k=8, ig=IGSettings(steps=8), progress=False)
    summary = run(cfg, root)
    # forecasting has no scalar output: not explained by default
    assert [t.task for t in summary.tasks] == ["readmission_30d", "death_1y_tte"]
    assert Path(summary.json) == root.explain_json and root.explain_md.exists()
    result = json.loads(root.explain_json.read_text())
    events = pd.read_parquet(root.explain_events)
    for t in summary.tasks:
        assert t.rows == 12 and t.converged == 12 and t.max_rel_error <= 0.01  # 6 patients x 2 held-out rows
        top = result["tasks"][t.task]["top_codes"]
        means = [r["mean_abs"]["value"] for r in top]
        assert means == sorted(means, reverse=True) and len(top) == 8
        for r in top:
            m = r["mean_abs"]
            assert m["ci_low"] <= m["value"] <= m["ci_high"]
        rows = events[events["task"] == t.task]
        assert rows["row"].nunique() == 12 and set(rows["kind"]) <= {"event", "static", "structure"}
        # the items of a row add up to its explained output minus the baseline's (completeness)
        assert (rows.groupby("row")["rel_error"].first() <= 0.01).all()
    assert "| rank | code |" in root.explain_md.read_text()
    again = run(cfg.replace(tasks=["readmission_30d"], max_rows=5), root)  # a rerun replaces the folder
    assert [t.rows for t in again.tasks] == [5]
    assert set(pd.read_parquet(root.explain_events)["task"]) == {"readmission_30d"}


def test_bad_tasks_are_refused_by_name(root: Layout) -> None:
    with pytest.raises(ConfigError, match="'next_visit_codes' is not a binary or time-to-event task"):
        run(ExplainConfig(tasks=["next_visit_codes"], progress=False), root)
    with pytest.raises(ConfigError, match="'nope'"):
        run(ExplainConfig(tasks=["nope"], progress=False), root)
    assert main(["explain", "--root", root.root, "--tasks", "[nope]"]) == 2
    with pytest.raises(FileNotFoundError):
        run(ExplainConfig(model=str(Path(root.root) / "missing"), progress=False), root)


def test_top_codes_rank_by_mean_abs_over_all_rows() -> None:
    # code A: large in one row of four; code B: small in every row; rows of two subjects
    items = pd.DataFrame({"row": [0, 0, 1, 2, 3, 0], "subject_id": [1, 1, 1, 2, 2, 1],
                          "code": ["A", "B", "B", "B", "B", "B"], "kind": "event",
                          "attribution": [-2.0, 0.1, 0.1, -0.1, 0.1, 0.3]})
    top = top_codes(items, 5, n_boot=50, seed=1)
    assert [r["code"] for r in top] == ["A", "B"]
    assert top[0]["mean_abs"]["value"] == pytest.approx(0.5) and top[0]["mean_signed"] == pytest.approx(-0.5)
    assert top[0]["rows_with_code"] == 1 and top[0]["mean_abs_when_present"] == pytest.approx(2.0)
    # B sums within a row before |.|: row 0 holds 0.1 + 0.3
    assert top[1]["mean_abs"]["value"] == pytest.approx(np.mean([0.4, 0.1, 0.1, 0.1]))
    assert top_codes(items, 1, n_boot=0)[0]["mean_abs"]["ci_low"] is None
