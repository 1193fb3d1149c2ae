"""The serving path in process: FHIR vs MEDS input parity, no leakage past prediction_time, partial records
and strict mode, and the registered pyfunc (models:/ehrfm@champion) giving the Scorer's predictions."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ehrfm.config.serve import Limits
from ehrfm.serve.core import Scorer
from ehrfm.serve.fhir_io import InputError
from ehrfm.serve.pyfunc import (
    OUTPUT_COLUMNS,
    env_limits,
    env_strict,
    example_bundle,
    predict_frame,
    signature,
)

SCORES = ("prob", "risk", "survival", "topk_probs")


def _events_json(events: pd.DataFrame) -> str:
    ev = events[["subject_id", "time", "code", "numeric_value", "encounter_id"]].copy()
    ev["time"] = ev["time"].map(lambda t: None if pd.isna(t) else t.isoformat())
    ev["numeric_value"] = ev["numeric_value"].astype(object).where(ev["numeric_value"].notna(), None)
    return json.dumps(ev.to_dict("records"))


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    assert list(a["task"]) == list(b["task"]) and list(a["subject_id"]) == list(b["subject_id"])
    for col in SCORES:
        for x, y in zip(a[col], b[col], strict=True):
            assert (x is None) == (y is None), col
            if x is not None:
                np.testing.assert_allclose(np.asarray(x, float), np.asarray(y, float), rtol=1e-5, atol=1e-6)


def test_bundle_and_meds_inputs_agree(scorer: Scorer, bundle_texts: list[str],
                                      bundle_events: list[pd.DataFrame]) -> None:
    by_bundle = predict_frame(scorer, pd.DataFrame({"bundle": bundle_texts[:2]}))
    by_events = predict_frame(scorer, pd.DataFrame({"events": [_events_json(e) for e in bundle_events[:2]]}))
    assert list(by_bundle.columns) == list(OUTPUT_COLUMNS) and len(by_bundle) == 2 * len(scorer.tasks)
    _same(by_bundle, by_events)
    last = [pd.Timestamp(e["time"].max()).isoformat() + "+00:00" for e in bundle_events[:2]]
    # default: last event; times carry their UTC offset
    assert list(by_bundle["prediction_time"]) == [t for t in last for _ in scorer.tasks]
    assert not by_bundle["partial"].any() and by_bundle["issues"].isna().all()
    assert by_bundle["patient_id"].notna().all() and by_events["patient_id"].isna().all()
    ra = json.loads(by_bundle["risk_assessment"].iloc[0])
    assert ra["subject"]["reference"] == f"Patient/{by_bundle['patient_id'].iloc[0]}"


def test_events_after_prediction_time_cannot_reach_the_model(scorer: Scorer,
                                                             bundle_events: list[pd.DataFrame]) -> None:
    ev = bundle_events[1]
    times = ev["time"].dropna().sort_values().unique()
    cut = pd.Timestamp(times[len(times) // 2])
    planted = pd.concat([ev, ev.assign(time=ev["time"] + pd.Timedelta(days=3)).dropna(subset=["time"])
                         .query("time > @cut")], ignore_index=True).sort_values("time", na_position="first")
    base = pd.DataFrame(scorer.score_events(ev, cut))
    _same(base, pd.DataFrame(scorer.score_events(planted, cut)))
    later = pd.DataFrame(scorer.score_events(ev))  # the same patient seen to the end does differ
    assert not np.allclose(base["prob"].dropna().astype(float), later["prob"].dropna().astype(float))


def test_unknown_task_and_subset(scorer: Scorer, bundle_texts: list[str]) -> None:
    out = predict_frame(scorer, pd.DataFrame({"bundle": [bundle_texts[0]], "tasks": ["death_1y_tte"]}))
    assert out["task"].tolist() == ["death_1y_tte"] and out["survival"].iloc[0][0] == 1.0
    with pytest.raises(InputError) as err:  # named by position, never by the text sent
        predict_frame(scorer, pd.DataFrame({"bundle": [bundle_texts[0]] * 2,
                                            "tasks": [None, "death_1y_tte, ZZMARKERZZ"]}))
    assert str(err.value) == (f"row 1: field 'tasks': item 1 is not a served task (served: {scorer.tasks})")
    assert err.value.status == 422


def test_partial_and_strict(scorer: Scorer, bundle_texts: list[str]) -> None:
    bundle = json.loads(bundle_texts[0])
    obs = next(i for i, e in enumerate(bundle["entry"])
               if e["resource"]["resourceType"] == "Observation" and "valueQuantity" in e["resource"])
    bundle["entry"][obs]["resource"]["valueQuantity"]["value"] = "ZZMARKERZZ"
    request = pd.DataFrame({"bundle": [bundle_texts[0], json.dumps(bundle)]})
    out = predict_frame(scorer, request)
    assert out.groupby("row")["partial"].all().tolist() == [False, True]
    oo = json.loads(out[out["row"] == 1]["issues"].iloc[0])
    assert [i["expression"] for i in oo["issue"]] == [["Observation.valueQuantity.value"]]
    assert f"entry[{obs}] Observation/" in oo["issue"][0]["diagnostics"] and "ZZMARKERZZ" not in out.to_json()
    # one bad value changes the record a little, not the request: row 0 is scored as if alone
    alone = predict_frame(scorer, request.iloc[:1])
    _same(out[out["row"] == 0].reset_index(drop=True), alone)
    with pytest.raises(InputError, match="row 1: 1 resource.* rejected \\(strict\\)") as err:
        predict_frame(scorer, request, strict=True)
    assert err.value.status == 422 and "ZZMARKERZZ" not in str(err.value)
    strict_scorer = copy.copy(scorer)  # the served default comes from serve.json's strict
    strict_scorer.config = scorer.config.replace(strict=True)
    with pytest.raises(InputError, match="strict"):
        predict_frame(strict_scorer, request)
    with pytest.raises(InputError, match="max_body_bytes") as err:
        predict_frame(scorer, request, Limits(max_body_bytes=len(bundle_texts[0]) + 10))
    assert err.value.status == 413


def test_real_bundles_dated_before_birth_score_partially(scorer: Scorer, synthea_bundles: Path) -> None:
    from test_fhir_io import BEFORE_BIRTH  # the bundles found there (tests/serve is on sys.path)

    texts = [gzip.decompress((synthea_bundles / name).read_bytes()).decode() for name in BEFORE_BIRTH]
    out = predict_frame(scorer, pd.DataFrame({"bundle": texts}))
    assert out.groupby("row")["partial"].all().tolist() == [True] * len(texts)
    counts = [len(json.loads(out[out["row"] == i]["issues"].iloc[0])["issue"]) for i in range(len(texts))]
    assert counts == [len(v) for v in BEFORE_BIRTH.values()]
    assert out["prediction_time"].str.endswith("+00:00").all()


def test_env_overrides_and_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EHRFM_SERVE_MAX_RESOURCES", "7")
    monkeypatch.setenv("EHRFM_SERVE_MAX_BODY_BYTES", "1000")
    limits = env_limits(Limits())
    assert limits.max_resources == 7 and limits.max_body_bytes == 1000 and limits.max_events == 100_000
    monkeypatch.setenv("EHRFM_SERVE_MAX_CLOCK_SKEW_S", "soon")
    with pytest.raises(ValueError, match="EHRFM_SERVE_MAX_CLOCK_SKEW_S: expected an integer"):
        env_limits(Limits())
    assert env_strict(False) is False
    monkeypatch.setenv("EHRFM_SERVE_STRICT", "true")
    assert env_strict(False) is True
    monkeypatch.setenv("EHRFM_SERVE_STRICT", "maybe")
    with pytest.raises(ValueError, match="EHRFM_SERVE_STRICT"):
        env_strict(False)
    outputs = signature().outputs
    assert outputs is not None and outputs.input_names() == list(OUTPUT_COLUMNS)


def test_example_is_scored(scorer: Scorer) -> None:
    out = predict_frame(scorer, [{"bundle": example_bundle(),
                                  "prediction_time": "2020-01-05T14:00:00+02:00"}])
    assert set(out["prediction_time"]) == {"2020-01-05T12:00:00+00:00"} and not out["partial"].any()


@pytest.mark.slow
def test_registered_pyfunc_matches_scorer(registry: dict[str, str], scorer: Scorer, bundle_texts: list[str],
                                          serving_dir: Path) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from ehrfm.serve.register import register

    mlflow.set_tracking_uri(registry["tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/ehrfm@champion")
    sig = model.metadata.signature
    assert sig is not None and "bundle" in sig.inputs.input_names()
    request = pd.DataFrame({"bundle": bundle_texts[:2], "prediction_time": [None, "2019-06-01T00:00:00Z"]})
    _same(model.predict(request), predict_frame(scorer, request))
    with pytest.raises(MlflowException, match="not valid JSON") as err:
        model.predict(pd.DataFrame({"bundle": ["{"]}))
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and err.value.get_http_status_code() == 400  # type: ignore[no-untyped-call]
    # registering again by run id reuses the run's pyfunc; a folder registers a new run; alias moves
    again = register(registry["run_id"], "ehrfm", None, store_dir=registry["store"],
                     tracking_uri=registry["tracking_uri"])
    assert again.model_uri == registry["model_uri"]
    folder = register(serving_dir.parent / "finetuned", "ehrfm", "champion", store_dir=registry["store"],
                      tracking_uri=registry["tracking_uri"])
    assert folder.run_id != registry["run_id"] and int(folder.version) == int(registry["version"]) + 2
    assert str(MlflowClient(registry["tracking_uri"])
               .get_model_version_by_alias("ehrfm", "champion").version) == folder.version
    MlflowClient(registry["tracking_uri"]).set_registered_model_alias("ehrfm", "champion",
                                                                      registry["version"])


def test_the_collector_is_paused_only_while_a_request_runs(scorer: Scorer, bundle_texts: list[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """gc_paused: off during parse/map/score, restored after (errors too), left off when found off."""
    import gc

    from ehrfm.serve import pyfunc

    seen: list[bool] = []
    real = pyfunc.parse_request  # type: ignore[attr-defined]

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(pyfunc, "parse_request", spy)
    assert gc.isenabled()
    predict_frame(scorer, {"bundle": bundle_texts[0]})
    with pytest.raises(InputError):
        predict_frame(scorer, {"bundle": "[]"})
    assert seen == [False, False] and gc.isenabled()
    gc.disable()
    try:
        predict_frame(scorer, {"bundle": bundle_texts[0]})
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_fast_and_reference_validation_serve_the_same(scorer: Scorer, bundle_texts: list[str]) -> None:
    """A record with invalid resources: the same scores, partial flag and OperationOutcome either way."""
    from ehrfm.ingest.fhir.validate import validator_engine

    bundle = json.loads(bundle_texts[1])
    obs = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    obs[0]["bogus"] = 1
    obs[1]["status"] = "fin  al"
    obs[2]["code"] = None
    request = {"bundle": json.dumps(bundle)}
    with validator_engine("reference"):
        reference = predict_frame(scorer, request)
    with validator_engine("fast"):
        fast = predict_frame(scorer, request)
    assert reference["partial"].all() and json.loads(reference["issues"][0])["issue"][2]
    for col in ("task", "subject_id", "prediction_time", "partial", "issues", "risk_assessment"):
        assert list(fast[col]) == list(reference[col]), col
    _same(fast, reference)


@pytest.mark.parametrize("max_len", [512, 24])
def test_serving_rows_equal_the_batch_tokenizer_on_real_records(scorer: Scorer,
                                                                bundle_events: list[pd.DataFrame],
                                                                max_len: int) -> None:
    """tokenize_for_prediction (task-independent part built once) == tokenize_subject's task rows."""
    import dataclasses

    from ehrfm.serve.core import default_prediction_time
    from ehrfm.tokenize import tokenize_for_prediction, tokenize_subject
    from ehrfm.tokenize.direct import rows_to_table, tokens_equal

    cfg = dataclasses.replace(scorer.tokenize_cfg, max_len=max_len)
    for events in bundle_events:
        for back_days in (0, 400):
            pt = default_prediction_time(events) - pd.Timedelta(days=back_days)
            served = tokenize_for_prediction(events, scorer.fm.vocab, scorer.bins, cfg, pt, scorer.tasks)
            labels = pd.DataFrame({"task": scorer.tasks, "prediction_time": [pt] * len(scorer.tasks)})
            batch = {r["task"]: r for r in tokenize_subject(events, scorer.fm.vocab, scorer.bins, cfg,
                                                            labels=labels, pretrain=False)}
            assert [r["task"] for r in served] == scorer.tasks
            assert tokens_equal(rows_to_table(served), rows_to_table([batch[t] for t in scorer.tasks]))


def test_the_pyfunc_class_draws_no_type_hint_warning() -> None:
    """MLflow warns about a PythonModel subclass whose predict has no type hints (under a filter of its own);
    ehrfm's has none on purpose (explicit signature) and opts out, so users see no such warning."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-W", "default", "-c", "import ehrfm.serve.pyfunc"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Add type hints to the `predict` method" not in done.stderr
