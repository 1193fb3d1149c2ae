"""Shared fixtures. Real data lives in ../shared/data; tests that need it FAIL (never skip) when it is
missing."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Remote:
    """A remote folder for a test (``uri``) and where its bytes land on this machine (``local``)."""

    uri: str
    local: Path | None


@pytest.fixture
def viewfs(spark, tmp_path: Path) -> Remote:  # type: ignore[no-untyped-def]
    """A ``viewfs://`` folder served by Hadoop's FileSystem in the test Spark session (a mount table,
    unique per test, links it to a local temporary folder): a scheme only Hadoop knows, so a stage that
    passes it touches no driver-local path. Spark readers/writers and :func:`ehrfm.storage.filesystem`
    (Hadoop in Spark's JVM) both serve it."""
    target = tmp_path / "viewfs"
    target.mkdir()
    table = f"t{uuid.uuid4().hex[:12]}"  # a new authority: Hadoop's FileSystem cache reads the mount afresh
    spark.sparkContext._jsc.hadoopConfiguration().set(f"fs.viewfs.mounttable.{table}.link./data",
                                                      target.as_uri())
    return Remote(f"viewfs://{table}/data", target)


@pytest.fixture(scope="session")
def _moto_endpoint() -> Iterator[str]:
    """One in-process S3 server (moto) for the test session, on a free local port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(_moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Remote:
    """A fresh bucket on the test S3 server as ``s3://<bucket>`` (credentials and endpoint in the standard
    AWS environment variables, which pyarrow and polars read): the local engines' object-store path."""
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": _moto_endpoint, "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    bucket = f"ehrfm-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=_moto_endpoint).create_bucket(Bucket=bucket)
    return Remote(f"s3://{bucket}", None)


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
