"""dataset_version of metadata/dataset.json: the user's --dataset_version, else the source's own (the MIMIC-IV
release in the input path; FHIR has none), else "unknown" -- never the ingest date. The end-to-end MIMIC
cases run in test_mimic_rejects.py (release in the path) and test_mimic_meds_etl.py (none: unknown)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import meds
import pytest

from ehrfm.cli import build_parser, split_namespace, stage
from ehrfm.config.base import ConfigError
from ehrfm.config.ingest import FhirIngestConfig, MimicIngestConfig
from ehrfm.ingest.fhir.stage import stamp_dataset_version
from ehrfm.ingest.mimic.ingest import resolve_dataset_version, version_from_path
from ehrfm.ingest.writer import UNKNOWN_VERSION, dataset_metadata


@pytest.mark.parametrize("root, version", [
    ("/data/physionet.org/files/mimiciv/2.2", "2.2"),  # PhysioNet's release folder
    ("/data/physionet.org/files/mimiciv/3.1/", "3.1"),
    ("/data/mimic-iv-clinical-database-demo-2.2", "2.2"),  # the name of PhysioNet's zip
    ("s3a://bucket/mimic_iv_v3.0", "3.0"),
    ("/x/2.2.1", "2.2.1"),
    ("/x/v2.2", "2.2"),
    ("/work/shared/data/mimic-iv-demo", None),
    ("/home/me/project-1.2/mimic", None),  # only the last part: a version higher up names something else
    ("/x/abc2.2", None),
    ("/x/mimic-2024", None),
    ("", None),
])
def test_version_from_path(root: str, version: str | None) -> None:
    assert version_from_path(root) == version


def test_the_flag_wins_over_the_path() -> None:
    assert resolve_dataset_version("3.1-x", "/x/mimiciv/2.2") == {"value": "3.1-x", "from": "argument"}
    assert resolve_dataset_version(None, "/x/mimiciv/2.2") == {"value": "2.2", "from": "input path"}
    assert resolve_dataset_version(None, "/x/mimic") == {"value": None, "from": "none (written as unknown)"}


def test_default_is_unknown_never_the_date() -> None:
    meta = dataset_metadata("d", "etl")
    assert meta["dataset_version"] == UNKNOWN_VERSION == "unknown"
    assert dt.date.today().isoformat() not in json.dumps({k: v for k, v in meta.items() if k != "created_at"})
    assert dataset_metadata("d", "etl", "2.2")["dataset_version"] == "2.2"


def test_flag_reaches_both_configs_and_blank_is_refused() -> None:
    ns = build_parser().parse_args(["ingest", "mimic", "--input", "x", "--dataset_version", "2.2"])
    cfg, _ = split_namespace(stage("ingest mimic"), ns["ingest"]["mimic"].as_dict())
    assert isinstance(cfg, MimicIngestConfig) and cfg.dataset_version == "2.2"
    ns = build_parser().parse_args(["ingest", "fhir", "--dataset_version", "synthea-3.0"])
    cfg, _ = split_namespace(stage("ingest fhir"), ns["ingest"]["fhir"].as_dict())
    assert isinstance(cfg, FhirIngestConfig) and cfg.dataset_version == "synthea-3.0"
    for cls in (MimicIngestConfig, FhirIngestConfig):
        with pytest.raises(ConfigError, match="dataset_version"):
            cls.from_dict({"dataset_version": " "})


def test_fhir_stage_stamps_the_flag_into_dataset_json(tmp_path: Path) -> None:
    (tmp_path / "metadata").mkdir()
    path = tmp_path / "metadata" / "dataset.json"
    path.write_text(json.dumps(dataset_metadata("fhir", "ehrfm.ingest.fhir")))
    stamp_dataset_version(str(tmp_path), "synthea-3.0")
    meta = json.loads(path.read_text())
    assert meta["dataset_version"] == "synthea-3.0" and meta["dataset_name"] == "fhir"
    meds.DatasetMetadataSchema.validate(meta)
