"""Shared fixtures. Real data lives in ../shared/data; tests that need it FAIL (never skip) when it is
missing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch

# Two cores, shared with Spark's JVM and Python workers during the suite: one intra-op thread avoids OpenMP
# threads spinning against them (measured 5-10x slower model steps with 2 threads under load).
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("EHRFM_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared/data; fails the test (not skip) when absent, as CI requires."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.fail(f"shared data missing: {p} (expected ../shared/data beside the repo; set "
                    "EHRFM_SHARED_DATA)")
    return p


@pytest.fixture(scope="session")
def synthea_bundles() -> Path:
    """Folder of 615 Synthea FHIR R4 bundles (.json.gz)."""
    return shared_path("synthea-fhir", "bundles")


@pytest.fixture(scope="session")
def mimic_demo() -> Path:
    """MIMIC-IV Clinical Database Demo v2.2 root (hosp/, icu/)."""
    return shared_path("mimic-iv-demo")


@pytest.fixture(scope="session")
def mimic_demo_meds() -> Path:
    """The MEDS-style events parquet of the same 100 MIMIC demo patients."""
    return shared_path("mimic-iv-demo-meds", "mimic_iv_demo_meds_events.parquet")


@pytest.fixture(autouse=True)
def _isolated_mlflow_uri() -> Iterator[None]:
    """``mlflow.set_tracking_uri`` also sets ``$MLFLOW_TRACKING_URI``: undo it after each test so one
    test's store
    never becomes the next test's default."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    """One local Spark session for the whole test run (start-up costs ~7 s)."""
    from ehrfm.spark import get_spark

    s = get_spark("ehrfm-tests", master="local[2]", conf={"spark.sql.shuffle.partitions": "4"})
    yield s
    s.stop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect ``gpu`` tests where no CUDA GPU is present (CPU tests always run)."""
    try:
        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def mimic_demo_ingested(spark, mimic_demo: Path,  # type: ignore[no-untyped-def]
                        tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, pd.DataFrame]:
    """The whole MIMIC-IV demo ingested once per test session (output folder, summary, events): every
    test module that reads the full demo output shares it (an ingest takes about a minute)."""
    from ehrfm.ingest.mimic.ingest import ingest_mimic

    out = tmp_path_factory.mktemp("mimic_demo") / "meds"
    summary = ingest_mimic(spark, str(mimic_demo), str(out))
    return out, summary, pd.read_parquet(out / "data")  # both layouts
