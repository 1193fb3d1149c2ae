"""The serving path in process: FHIR vs MEDS input parity, no leakage past prediction_time, and the
registered pyfunc (models:/ehrfm@champion) giving the Scorer's predictions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ehrfm.serve.core import Scorer
from ehrfm.serve.fhir_io import InputError
from ehrfm.serve.pyfunc import OUTPUT_COLUMNS, predict_frame

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
    last = [pd.Timestamp(e["time"].max()).isoformat() for e in bundle_events[:2]]
    # default: last event
    assert list(by_bundle["prediction_time"]) == [t for t in last for _ in scorer.tasks]
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
    with pytest.raises(InputError, match="row 0: field 'tasks'.*'nope' is not served"):
        predict_frame(scorer, pd.DataFrame({"bundle": [bundle_texts[0]], "tasks": ["nope"]}))


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
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and err.value.get_http_status_code() == 400
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
