"""Batch scoring on Spark equals the served / in-process predictions for the same patients and times,
and the batch-evaluation path (`ehrfm.train.predict.predict`) on the same token rows; FHIR Bundle files
scored on Spark equal `predict_frame` row for row (scores, partial flags, issues, rejected files)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm.schema import EVENTS_SCHEMA, PREDICTION_TIME, SUBJECT_ID, TIME
from ehrfm.serve.core import Scorer
from ehrfm.serve.fhir_io import InputError
from ehrfm.serve.pyfunc import predict_frame
from ehrfm.serve.score import (
    CONTRACT_COLUMNS,
    FHIR_EXTRA_COLUMNS,
    REJECT_COLUMNS,
    fhir_predictions,
    fhir_rejects,
    score_fhir,
    score_meds,
    score_tokens,
)
from ehrfm.tokenize import tokenize_subject
from ehrfm.tokenize.direct import rows_to_table, write_local

pytestmark = pytest.mark.spark
SCORES = ("prob", "risk", "survival", "topk_probs")


def _close(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Same keys, same scores (float tolerance: batches pad differently)."""
    key = [SUBJECT_ID, PREDICTION_TIME, "task"]
    # served times carry "+00:00", batch times are naive UTC: compare both as UTC
    a, b = (d.assign(**{PREDICTION_TIME: pd.to_datetime(d[PREDICTION_TIME], utc=True)})
            .sort_values(key).reset_index(drop=True) for d in (a, b))
    pd.testing.assert_frame_equal(a[key], b[key], check_dtype=False)
    for col in SCORES:
        for x, y in zip(a[col].map(_val), b[col].map(_val), strict=True):
            assert (x is None) == (y is None), col
            if x is not None:
                np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), rtol=1e-4, atol=1e-6)
    assert a["topk_codes"].map(_val).tolist() == b["topk_codes"].map(_val).tolist()


def _val(v: object) -> object:
    """A cell as a plain value: lists/arrays as lists, NaN/None as None."""
    if isinstance(v, (list, tuple, np.ndarray)):
        return list(v)
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else v


@pytest.fixture(scope="module")
def meds_dir(tmp_path_factory: pytest.TempPathFactory, bundle_events: list[pd.DataFrame]) -> Path:
    """The bundles' events as a MEDS dataset (all held_out)."""
    out = tmp_path_factory.mktemp("meds")
    (out / "data").mkdir()
    (out / "metadata").mkdir()
    ev = pd.concat(bundle_events[:3], ignore_index=True)
    pq.write_table(pa.Table.from_pandas(ev, schema=EVENTS_SCHEMA, preserve_index=False),
                   out / "data" / "part-0.parquet")
    pd.DataFrame({SUBJECT_ID: ev[SUBJECT_ID].unique(), "split": "held_out"}).to_parquet(
        out / "metadata" / "subject_splits.parquet", index=False)
    return out


def test_meds_scoring_equals_serving(spark: object, serving_dir: Path, scorer: Scorer, meds_dir: Path,
                                     bundle_texts: list[str]) -> None:
    got = score_meds(spark, serving_dir, meds_dir).toPandas()  # type: ignore[arg-type]
    assert list(got.columns) == CONTRACT_COLUMNS and set(got["split"]) == {"held_out"}
    # same default time: last event
    served = predict_frame(scorer, pd.DataFrame({"bundle": bundle_texts[:3]}))
    _close(got, served)
    fixed = "2018-03-01T00:00:00"
    got_fixed = score_meds(spark, serving_dir, meds_dir, prediction_time=fixed).toPandas()  # type: ignore[arg-type]
    served_fixed = predict_frame(scorer,
                                 pd.DataFrame({"bundle": bundle_texts[:3], "prediction_time": [fixed] * 3}))
    _close(got_fixed, served_fixed)
    risk = [g.sort_values(SUBJECT_ID)["risk"].dropna().to_numpy() for g in (got, got_fixed)]
    assert not np.allclose(risk[0], risk[1])  # the time is honoured: an earlier cut changes the risks


@pytest.mark.slow
def test_score_cli_with_registered_model(spark: object, registry: dict[str, str], meds_dir: Path,
                                         tmp_path: Path,
                                         scorer: Scorer, bundle_texts: list[str]) -> None:
    from ehrfm.cli import main

    assert main(["score", "--model", "models:/ehrfm@champion", "--source", "meds", "--meds", str(meds_dir),
                 "--scores", str(tmp_path / "pred"), "--tracking_uri", registry["tracking_uri"]]) == 0
    _close(pd.read_parquet(tmp_path / "pred"),
           predict_frame(scorer, pd.DataFrame({"bundle": bundle_texts[:3]})))


def test_token_scoring_equals_serving_and_batch_eval(spark: object, serving_dir: Path, scorer: Scorer,
                                                     bundle_events: list[pd.DataFrame],
                                                     tmp_path: Path) -> None:
    from ehrfm.prepare.bins import load_bins
    from ehrfm.tokenize import TokenizerConfig
    from ehrfm.train.predict import predict

    labels, rows = [], []
    for i, ev in enumerate(bundle_events):
        times = ev[TIME].dropna().sort_values()
        for q in (0.5, 1.0):  # two prediction times per subject and task
            pt = times.iloc[int(q * (len(times) - 1))]
            for task in scorer.tasks:
                labels.append({"task": task, SUBJECT_ID: int(ev[SUBJECT_ID].iloc[0]), PREDICTION_TIME: pt,
                               "boolean_value": bool(i % 2), "duration_days": 10.0, "event": i % 2,
                               "target_codes": ["DIAGNOSIS//SNOMED//0"]})
        lab = pd.DataFrame(labels[-2 * len(scorer.tasks):])
        rows += tokenize_subject(ev, scorer.fm.vocab, load_bins(serving_dir / "bins.json"), TokenizerConfig(),
                                 labels=lab, split="held_out" if i else "tuning", pretrain=False)
    tokens = tmp_path / "tokens"
    write_local(rows_to_table(rows), tokens, scorer.tasks)
    got = score_tokens(spark, serving_dir, tokens).toPandas()  # type: ignore[arg-type]
    assert len(got) == len(labels) and set(got["split"]) == {"tuning", "held_out"}
    lab = pd.DataFrame(labels)
    served = pd.concat([pd.DataFrame(scorer.score_events(bundle_events[int(i)], pt, [t]))  # the serving path
                        for (i, pt, t) in zip(lab.index // (2 * len(scorer.tasks)), lab[PREDICTION_TIME],
                                              lab["task"],
                                              strict=True)], ignore_index=True)
    _close(got, served)
    batch = predict(serving_dir, tokens, progress=False)  # ehrfm finetune's prediction path
    _close(got, batch)

    from ehrfm.config.serve import ScoreConfig
    from ehrfm.config.tokenize import TokenizeSummary
    from ehrfm.layout import Layout
    from ehrfm.serve.stage import run_score
    from ehrfm.tokenize.meta import write_meta

    # the stage reads only complete tokens folders: the marker `ehrfm tokenize` writes last
    write_meta(tokens, TokenizerConfig(), TokenizeSummary(tasks=list(scorer.tasks), pretrain=False,
                                                          n_rows=len(rows), rows=[], seconds=0.0))
    out = tmp_path / "pred"
    run_score(ScoreConfig(model=str(serving_dir), tasks=["death_1y_tte"], splits=["held_out"]),
              Layout(root=str(tmp_path), tokens=str(tokens), scores=str(out)))
    written = pd.read_parquet(out)
    assert set(written["task"]) == {"death_1y_tte"} and set(written["split"]) == {"held_out"}
    assert len(written) == 2 * (len(bundle_events) - 1)


@pytest.fixture(scope="module")
def fhir_dir(tmp_path_factory: pytest.TempPathFactory, bundle_texts: list[str]) -> Path:
    """Bundle files, plain and gzip, nested: two clean, one with a planted bad Observation value (a
    partial record), one whose Patient has no id and one broken file (both rejected), and a file the
    glob must skip."""
    out = tmp_path_factory.mktemp("fhir")
    (out / "nested" / "deeper").mkdir(parents=True)
    bad_obs = json.loads(bundle_texts[2])
    obs = next(e["resource"] for e in bad_obs["entry"]
               if e["resource"]["resourceType"] == "Observation" and "valueQuantity" in e["resource"])
    obs["valueQuantity"]["value"] = "ZZMARKERZZ"
    no_id = json.loads(bundle_texts[3])
    del next(e["resource"] for e in no_id["entry"] if e["resource"]["resourceType"] == "Patient")["id"]
    (out / "clean.json").write_text(bundle_texts[0])
    (out / "nested" / "clean.json.gz").write_bytes(gzip.compress(bundle_texts[1].encode()))
    (out / "nested" / "deeper" / "bad_obs.json").write_text(json.dumps(bad_obs))
    (out / "no_patient_id.json.gz").write_bytes(gzip.compress(json.dumps(no_id).encode()))
    (out / "broken.json").write_text('{"resourceType": "Bundle", ZZMARKERZZ')
    (out / "notes.txt").write_text("not a bundle")
    return out


def test_fhir_scoring_equals_predict_frame(spark: object, serving_dir: Path, scorer: Scorer,
                                           fhir_dir: Path, tmp_path: Path) -> None:
    combined = score_fhir(spark, serving_dir, fhir_dir).persist()  # type: ignore[arg-type]
    got = fhir_predictions(combined).toPandas()
    rejected = fhir_rejects(combined).toPandas()
    assert list(got.columns) == [*CONTRACT_COLUMNS, *FHIR_EXTRA_COLUMNS]
    assert list(rejected.columns) == REJECT_COLUMNS
    files = sorted(p for p in fhir_dir.rglob("*") if p.name.endswith((".json", ".json.gz")))
    want, want_rejects = [], []
    for f in files:
        text = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        try:
            want.append(predict_frame(scorer, pd.DataFrame({"bundle": [text]})).assign(file=f.name))
        except InputError as e:
            want_rejects.append((f.name, e.status, str(e)))
    served = pd.concat(want, ignore_index=True)
    got["file"] = got["file"].map(lambda u: u.rsplit("/", 1)[-1])
    key = ["file", "task"]
    got, served = (d.sort_values(key).reset_index(drop=True) for d in (got, served))
    _close(got, served)  # scores, keys, forecast codes
    assert got[key].values.tolist() == served[key].values.tolist()
    assert got["partial"].tolist() == served["partial"].tolist()
    assert set(got.loc[got["partial"], "file"]) == {"bad_obs.json"}
    assert [None if v is None else json.loads(v) for v in got["issues"]] == [
        None if v is None else json.loads(v) for v in served["issues"]]
    assert got["patient_id"].tolist() == served["patient_id"].tolist()
    named = [(str(f).rsplit("/", 1)[-1], int(s), m) for f, s, m in rejected.values]
    assert sorted(named) == sorted(want_rejects)
    assert {r[:2] for r in want_rejects} == {("broken.json", 400), ("no_patient_id.json.gz", 422)}
    assert "ZZMARKERZZ" not in got.to_json() + rejected.to_json()
    combined.unpersist()

    from ehrfm.config.serve import ScoreConfig
    from ehrfm.evaluate.data import validate_predictions
    from ehrfm.layout import Layout
    from ehrfm.serve.stage import run_score

    out = tmp_path / "scores"
    summary = run_score(ScoreConfig(model=str(serving_dir), source="fhir", input=str(fhir_dir),
                                    tasks=["death_1y_tte"]), Layout(root=str(tmp_path), scores=str(out)))
    written = validate_predictions(pd.read_parquet(out))  # the evaluation reads it as any predictions
    assert set(written["task"]) == {"death_1y_tte"} and len(written) == len(files) - len(want_rejects)
    assert summary.rejected == 2 and summary.rejects is not None
    assert len(pd.read_parquet(summary.rejects)) == 2


@pytest.mark.slow
def test_score_on_a_cluster_master(registry: dict[str, str], meds_dir: Path, tmp_path: Path, scorer: Scorer,
                                   bundle_texts: list[str]) -> None:
    """On a master with separate executor JVMs and working directories (``local-cluster``: what a standalone
    cluster does; a local directory cannot be shipped there) the model reaches the executors and scores as
    the server does."""
    import os
    import subprocess
    import sys

    out = tmp_path / "pred"
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "ehrfm.cli", "score", "--model", "models:/ehrfm@champion",
                           "--source", "meds", "--meds", str(meds_dir), "--scores", str(out),
                           "--tracking_uri", registry["tracking_uri"],
                           "--spark.master", "local-cluster[1,1,1024]"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _close(pd.read_parquet(out), predict_frame(scorer, pd.DataFrame({"bundle": bundle_texts[:3]})))
