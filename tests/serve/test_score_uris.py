"""``ehrfm score`` on Hadoop-compatible URIs: inputs and outputs on ``viewfs://`` (a scheme only Hadoop's
FileSystem serves, so nothing can go through a driver-local path) give the same predictions, row for row,
as the same run on local folders; the outputs are written in place with their marker last, and a remote
output without its marker is refused before any scoring."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ehrfm.atomic import PartialOutputError
from ehrfm.config.serve import ScoreConfig
from ehrfm.layout import SCORES_MARKER, Layout
from ehrfm.schema import PREDICTION_TIME, SUBJECT_ID, TIME
from ehrfm.serve.core import Scorer
from ehrfm.serve.score import CONTRACT_COLUMNS

pytestmark = pytest.mark.spark
LISTS = ("survival", "times_days", "topk_codes", "topk_probs")


def _same_rows(a: pd.DataFrame, b: pd.DataFrame, key: list[str]) -> None:
    """Same columns, same keys and the same values row for row (scores to float precision: Spark may batch
    rows differently, and a batch pads to its longest row)."""
    assert list(a.columns) == list(b.columns)
    a, b = (d.sort_values(key).reset_index(drop=True) for d in (a, b))
    lists = [c for c in LISTS if c in a]
    plain = [c for c in a.columns if c not in lists and c not in ("prob", "risk")]
    pd.testing.assert_frame_equal(a[plain], b[plain])
    np.testing.assert_allclose(a[["prob", "risk"]].to_numpy(float), b[["prob", "risk"]].to_numpy(float),
                               rtol=1e-5, atol=1e-7)
    for c in lists:
        for x, y in zip(a[c], b[c], strict=True):
            assert (x is None) == (y is None), c
            if x is not None and c == "topk_codes":
                assert list(x) == list(y)
            elif x is not None:
                np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), rtol=1e-5, atol=1e-7)


def _same_summary(a: list[dict[str, object]], b: list[dict[str, object]]) -> None:
    """Per-task summaries (Spark aggregates) agree: counts exactly, means to float precision (partial sums
    may be merged in another order)."""
    assert [(r["task"], r["rows"], r["subjects"]) for r in a] == [(r["task"], r["rows"], r["subjects"])
                                                                   for r in b]
    for x, y in zip(a, b, strict=True):
        for key in ("mean_prob", "mean_risk"):
            assert (x[key] is None) == (y[key] is None), key
            if x[key] is not None:
                assert x[key] == pytest.approx(y[key], rel=1e-9), key


@pytest.fixture(scope="module")
def tokens_dir(tmp_path_factory: pytest.TempPathFactory, scorer: Scorer, serving_dir: Path,
               bundle_events: list[pd.DataFrame]) -> Path:
    """A complete local tokens folder (task rows at two times per subject, two splits, ``tokenize.json``) of
    two of the model's three tasks (the scorer finds which are there), tokenized with the serving folder's
    vocabulary and bins."""
    from ehrfm.config.tokenize import TokenizeSummary
    from ehrfm.prepare.bins import load_bins
    from ehrfm.tokenize import TokenizerConfig, tokenize_subject
    from ehrfm.tokenize.direct import rows_to_table, write_local
    from ehrfm.tokenize.meta import write_meta

    bins, rows, tasks = load_bins(serving_dir / "bins.json"), [], scorer.tasks[::2]
    assert len(tasks) == 2 < len(scorer.tasks)
    for i, ev in enumerate(bundle_events):
        times = ev[TIME].dropna().sort_values()
        labels = pd.DataFrame([{"task": task, SUBJECT_ID: int(ev[SUBJECT_ID].iloc[0]),
                                PREDICTION_TIME: times.iloc[int(q * (len(times) - 1))],
                                "boolean_value": bool(i % 2), "duration_days": 5.0 + i, "event": i % 2,
                                "target_codes": ["DIAGNOSIS//SNOMED//0"]}
                               for q in (0.4, 1.0) for task in tasks])
        rows += tokenize_subject(ev, scorer.fm.vocab, bins, TokenizerConfig(), labels=labels,
                                 split="train" if i % 2 else "held_out", pretrain=False)
    out = tmp_path_factory.mktemp("tokens_uri") / "tokens"
    write_local(rows_to_table(rows), out, tasks)
    write_meta(out, TokenizerConfig(), TokenizeSummary(tasks=list(tasks), pretrain=False,
                                                       n_rows=len(rows), rows=[], seconds=0.0))
    return out


def test_score_tokens_on_viewfs_equals_local(spark: object, viewfs: object, serving_dir: Path,
                                             tokens_dir: Path, tmp_path: Path) -> None:
    from ehrfm.serve.stage import run_score

    cfg = ScoreConfig(model=str(serving_dir))
    local = run_score(cfg, Layout(root=str(tmp_path), tokens=str(tokens_dir),
                                  scores=str(tmp_path / "scores")))

    uri, mount = viewfs.uri, viewfs.local  # type: ignore[attr-defined]
    shutil.copytree(tokens_dir, mount / "tokens")  # the remote input: the same files under viewfs://
    (mount / "scores").mkdir()
    (mount / "scores" / "part-00000.parquet").write_bytes(b"half a file")  # an interrupted earlier run
    remote = Layout(root=uri)  # every folder under a viewfs:// root: no local folder named at all
    refused = re.escape(f"scores={uri + '/scores'!r}: . present but {SCORES_MARKER}")
    with pytest.raises(PartialOutputError, match=refused):
        run_score(cfg, remote)
    assert sorted(p.name for p in (mount / "scores").iterdir()) == ["part-00000.parquet"]  # untouched

    summary = run_score(cfg.replace(overwrite=True), remote)
    assert summary.output == f"{uri}/scores"
    got, want = pd.read_parquet(mount / "scores"), pd.read_parquet(tmp_path / "scores")
    assert list(got.columns) == CONTRACT_COLUMNS and len(got) == 2 * 2 * 4  # times x tasks x subjects
    assert set(got["task"]) == set(Scorer(serving_dir).tasks[::2])
    _same_rows(got, want, [SUBJECT_ID, PREDICTION_TIME, "task"])
    _same_summary(summary.rows, local.rows)  # the per-task summary (a Spark aggregate) agrees too
    marker = json.loads((mount / "scores" / SCORES_MARKER).read_text())
    assert {k: v for k, v in marker.items() if k != "rows"} == {"model": str(serving_dir), "source": "tokens"}
    _same_summary(marker["rows"], local.rows)
    assert not [p for p in mount.rglob("*") if "ehrfm-staging" in p.name]  # in place: no staging folder


def test_score_fhir_on_viewfs_equals_local(spark: object, viewfs: object, serving_dir: Path,
                                           bundle_texts: list[str], tmp_path: Path) -> None:
    """Bundle files read from viewfs://, predictions and rejects (default ``<scores>_rejects``) written
    there: the same rows as from local folders, apart from the file URIs."""
    from ehrfm.serve.stage import run_score

    uri, mount = viewfs.uri, viewfs.local  # type: ignore[attr-defined]
    for folder in (tmp_path / "bundles", mount / "bundles"):
        (folder / "nested").mkdir(parents=True)
        (folder / "a.json").write_text(bundle_texts[0])
        (folder / "nested" / "b.json").write_text(bundle_texts[1])
        (folder / "broken.json").write_text('{"resourceType": "Bundle", ZZMARKERZZ')
    cfg = ScoreConfig(model=str(serving_dir), source="fhir", input=str(tmp_path / "bundles"),
                      tasks=["death_1y_tte"])
    local = run_score(cfg, Layout(root=str(tmp_path), scores=str(tmp_path / "scores")))
    remote = run_score(cfg.replace(input=f"{uri}/bundles"), Layout(root=str(tmp_path), scores=f"{uri}/out"))
    assert (remote.output, remote.rejects, remote.rejected) == (f"{uri}/out", f"{uri}/out_rejects", 1)
    assert local.rejected == 1
    _same_summary(remote.rows, local.rows)
    frames = []
    for out in (mount / "out", tmp_path / "scores", mount / "out_rejects", tmp_path / "scores_rejects"):
        frame = pd.read_parquet(out)
        assert str(uri if out.is_relative_to(mount) else tmp_path) in frame["file"].iloc[0]
        frames.append(frame.assign(file=frame["file"].map(lambda f: f.rsplit("/bundles/", 1)[-1])))
    _same_rows(frames[0], frames[1], ["file", "task"])
    pd.testing.assert_frame_equal(frames[2], frames[3])
    assert frames[2]["file"].tolist() == ["broken.json"] and "ZZMARKERZZ" not in frames[2].to_json()
    assert json.loads((mount / "out_rejects" / SCORES_MARKER).read_text()) == {"rejected": 1}


def test_score_meds_on_viewfs_equals_local(spark: object, viewfs: object, serving_dir: Path,
                                           bundle_events: list[pd.DataFrame], tmp_path: Path) -> None:
    """A MEDS folder on viewfs:// scored at each subject's last event, splits from its
    ``metadata/subject_splits.parquet`` (joined in Spark): the same rows as from a local folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ehrfm.schema import EVENTS_SCHEMA
    from ehrfm.serve.stage import run_score

    uri, mount = viewfs.uri, viewfs.local  # type: ignore[attr-defined]
    ev = pd.concat(bundle_events[:3], ignore_index=True)
    subjects = ev[SUBJECT_ID].unique()
    for meds in (tmp_path / "meds", mount / "meds"):
        (meds / "data" / "train").mkdir(parents=True)
        (meds / "metadata").mkdir()
        pq.write_table(pa.Table.from_pandas(ev, schema=EVENTS_SCHEMA, preserve_index=False),
                       meds / "data" / "train" / "0.parquet")
        # the last subject has no split: a null split, as before
        pd.DataFrame({SUBJECT_ID: subjects[:2], "split": ["train", "held_out"]}).to_parquet(
            meds / "metadata" / "subject_splits.parquet", index=False)
    cfg = ScoreConfig(model=str(serving_dir), source="meds")
    local = run_score(cfg, Layout(root=str(tmp_path)))
    remote = run_score(cfg, Layout(root=uri))
    assert remote.output == f"{uri}/scores"
    _same_summary(remote.rows, local.rows)
    got, want = pd.read_parquet(mount / "scores"), pd.read_parquet(tmp_path / "scores")
    _same_rows(got, want, [SUBJECT_ID, "task"])
    split_of = dict(zip(got[SUBJECT_ID], got["split"], strict=False))
    assert [split_of[s] for s in subjects] == ["train", "held_out", None]


def test_score_checks_remote_inputs_before_scoring(spark: object, viewfs: object, serving_dir: Path,
                                                   tokens_dir: Path) -> None:
    """The driver's checks read the remote folders through Hadoop: a missing tokens folder and one without
    its completion marker are refused by name, and nothing is written."""
    from ehrfm.atomic import IncompleteInputError
    from ehrfm.config.base import ConfigError
    from ehrfm.layout import TOKENS_META
    from ehrfm.serve.stage import run_score

    uri, mount = viewfs.uri, viewfs.local  # type: ignore[attr-defined]
    cfg, remote = ScoreConfig(model=str(serving_dir)), Layout(root=uri)
    with pytest.raises(ConfigError, match=re.escape(f"source=tokens: no tokens folder at {uri}/tokens")):
        run_score(cfg, remote)
    shutil.copytree(tokens_dir, mount / "tokens")
    (mount / "tokens" / TOKENS_META).unlink()  # an interrupted tokenize
    unmarked = re.escape(f"tokens={uri + '/tokens'!r}: no {TOKENS_META}")
    with pytest.raises(IncompleteInputError, match=unmarked):
        run_score(cfg, remote)
    assert sorted(p.name for p in mount.iterdir()) == ["tokens"]
