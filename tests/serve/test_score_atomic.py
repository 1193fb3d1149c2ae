"""``ehrfm score`` writes its scores and rejects folders through ehrfm.atomic: a folder without its marker
(an interrupted run) is refused before any scoring, ``overwrite`` replaces it, and each published folder
carries ``_score.json`` (skipped by parquet readers) and nothing of the staging."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from ehrfm.atomic import PartialOutputError
from ehrfm.config.serve import ScoreConfig
from ehrfm.layout import SCORES_MARKER, Layout


@pytest.mark.spark
def test_score_refuses_partial_folder_then_publishes(spark: object, serving_dir: Path,
                                                     bundle_texts: list[str], tmp_path: Path) -> None:
    from ehrfm.serve.stage import run_score

    bundles = tmp_path / "bundles"
    bundles.mkdir()
    for i, text in enumerate(bundle_texts[:2]):
        (bundles / f"p{i}.json").write_text(text)
    out = tmp_path / "out" / "scores"
    out.mkdir(parents=True)
    (out / "part-00000.parquet").write_bytes(b"half a file")  # an interrupted earlier run
    layout = Layout(root=str(tmp_path), scores=str(out))
    cfg = ScoreConfig(model=str(serving_dir), source="fhir", input=str(bundles), tasks=["death_1y_tte"])
    with pytest.raises(PartialOutputError, match=f"scores={str(out.parent)!r}: scores present but "
                                                 f"scores/{SCORES_MARKER}"):
        run_score(cfg, layout)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]  # untouched

    summary = run_score(cfg.replace(overwrite=True), layout)
    marker = json.loads((out / SCORES_MARKER).read_text())
    assert marker["model"] == str(serving_dir) and marker["rows"][0]["rows"] == 2
    assert len(pd.read_parquet(out)) == 2  # the marker is not read as data
    rejects = Path(str(summary.rejects))
    assert json.loads((rejects / SCORES_MARKER).read_text()) == {"rejected": 0}
    assert sorted(p.name for p in out.parent.iterdir()) == ["scores", "scores_rejects"]  # no staging left
