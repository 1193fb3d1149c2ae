"""Serving fixtures: a few small real Synthea bundles and a tiny, randomly initialised serving folder."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import pandas as pd
import pytest
from helpers.tiny_model import tiny_serving_dir

from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.serve.core import Scorer


def smallest_bundles(folder: Path, n: int) -> list[Path]:
    """The ``n`` smallest patient bundles (MANIFEST json_bytes; skips the organisation/practitioner files)."""
    with open(folder.parent / "MANIFEST.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    rows = [r for r in rows if r["patient_id"]]
    rows.sort(key=lambda r: int(r["json_bytes"]))
    return [folder.parent / r["file"] for r in rows[:n]]


@pytest.fixture(scope="session")
def bundle_texts(synthea_bundles: Path) -> list[str]:
    """JSON text of 4 small real Synthea patient bundles."""
    return [gzip.open(p).read().decode("utf-8") for p in smallest_bundles(synthea_bundles, 4)]


@pytest.fixture(scope="session")
def bundle_events(bundle_texts: list[str]) -> list[pd.DataFrame]:
    """Their MEDS events (the one-patient ingest path)."""
    return [bundle_to_events(t, validate="none").events_df() for t in bundle_texts]


@pytest.fixture(scope="session")
def serving_dir(tmp_path_factory: pytest.TempPathFactory, bundle_events: list[pd.DataFrame]) -> Path:
    """A serving folder with a tiny random model; vocabulary and bins fitted on the bundles' events."""
    return tiny_serving_dir(pd.concat(bundle_events, ignore_index=True), tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def scorer(serving_dir: Path) -> Scorer:
    """The loaded serving folder."""
    return Scorer(serving_dir)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory, serving_dir: Path) -> dict[str, str]:
    """A sqlite MLflow store where a finetuning-like run (its model folder logged as ``model/``) was
    registered by run id as ``ehrfm`` with alias ``champion``. Returns tracking_uri, run_id, model_uri."""
    from ehrfm.serve.register import register
    from ehrfm.tracking import Tracker

    store = tmp_path_factory.mktemp("mlflow")
    tracker = Tracker(store, "ehrfm-finetune")
    run_id = tracker.start_run("finetune-tiny")
    finetuned = serving_dir.parent / "finetuned"  # as `ehrfm finetune` logs <output>/model
    tracker.log_artifacts(finetuned, "model")
    tracker.end("FINISHED")
    reg = register(run_id, "ehrfm", "champion", store_dir=store, tracking_uri=tracker.tracking_uri)
    return {"tracking_uri": reg.tracking_uri, "run_id": run_id, "model_uri": reg.model_uri,
            "store": str(store),
            "version": reg.version}
