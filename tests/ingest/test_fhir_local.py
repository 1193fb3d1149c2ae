"""The local FHIR engine (process pool + polars, no JVM) against the Spark one: the same per-record code and
settling rules, two orchestrations, one output. Two corpora go through both: NDJSON exports cut into byte
ranges with duplicates, conflicting versions, bad lines and an orphan (every record final in one pass), and
the corrupted real Bundle corpus of test_fhir_inputs (the cross-file pass, link cycles, copies). Events
(every column, the order within each subject), rejects, metadata, splits, subject ids and the summary
(bar the engine's name and the stage timings) must be identical."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from ehrfm.config.base import ConfigError
from ehrfm.ingest.fhir import spark_ingest
from ehrfm.ingest.fhir.local_ingest import expand_local_inputs, ingest_fhir_local
from ehrfm.ingest.fhir.paths import expand_inputs
from ehrfm.synth import SynthConfig, generate
from tests.ingest.test_fhir_inputs import build_corpus
from tests.ingest.test_mimic_local import assert_same_output

pytestmark = pytest.mark.spark

MAX_TIME = 1_893_456_000_000_000  # 2030-01-01


def _without_timings(out: Path, to: Path) -> Path:
    """A copy of the dataset ``out`` whose summary.json lacks the stage timings (they differ run to run)."""
    shutil.copytree(out, to)
    summary = json.loads((to / "summary.json").read_text())
    summary.pop("seconds", None)
    (to / "summary.json").write_text(json.dumps(summary))
    return to


def _both(spark: Any, inputs: list[str], tmp: Path, **kw: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    a = spark_ingest.ingest_fhir(spark, inputs, str(tmp / "spark"), max_time_us=MAX_TIME, **kw)
    b = ingest_fhir_local(inputs, str(tmp / "local"), max_time_us=MAX_TIME, workers=2, **kw)
    assert_same_output(_without_timings(tmp / "spark", tmp / "spark_cmp"),
                       _without_timings(tmp / "local", tmp / "local_cmp"))
    return a, b


def _ndjson_corpus(top: Path) -> None:
    """A synthetic export in shards, plus what real exports carry: a copy of a shard (duplicates), newer and
    conflicting versions of resources, a malformed line, a Bundle line, a record of an unknown Patient."""
    generate(SynthConfig(n_patients=40, seed=3, patients_per_file=15), top / "export")
    obs = sorted((top / "export").glob("Observation.*.ndjson"))[0]
    lines = obs.read_text().splitlines()
    (top / "copy").mkdir()
    shutil.copy(obs, top / "copy" / obs.name)
    first, second = json.loads(lines[0]), json.loads(lines[1])
    first["meta"] = {"lastUpdated": "2024-01-01T00:00:00Z"}
    first["status"] = "amended"
    second["status"] = "amended"
    orphan = {**json.loads(lines[2]), "id": "orphan-1", "subject": {"reference": "Patient/nobody"}}
    (top / "extra.ndjson").write_text("\n".join([
        json.dumps(first), json.dumps(second), '{"resourceType": "Observation", "id": ', "",
        json.dumps({"resourceType": "Bundle", "id": "b"}), json.dumps(orphan), "[1, 2]"]) + "\n")


def test_ndjson_export_identical_to_spark(spark: Any, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _ndjson_corpus(tmp_path / "in")
    # cut the big shards into byte ranges in both engines (line numbers across range boundaries)
    monkeypatch.setattr(spark_ingest, "SPLIT_BYTES", 200_000)
    a, b = _both(spark, [str(tmp_path / "in")], tmp_path)
    assert b["engine"] == "local" and b["events"] == a["events"] > 1000
    assert b["totals"]["duplicate"] > 0 and b["totals"]["rejected"] >= 5 and b["reconciled"]
    assert b["validation_sample"]["checked"] > 0


def test_anonymous_subjects_and_full_validation_identical(spark: Any, tmp_path: Path) -> None:
    _ndjson_corpus(tmp_path / "in")
    a, b = _both(spark, [str(tmp_path / "in" / "extra.ndjson"), str(tmp_path / "in" / "export")], tmp_path,
                 anonymous_subjects=True, validate="full")
    assert b["totals"] == a["totals"]


def test_corrupted_bundle_corpus_identical_to_spark(spark: Any, synthea_bundles: Path,
                                                    tmp_path: Path) -> None:
    build_corpus(synthea_bundles, tmp_path / "in")
    a, b = _both(spark, [str(tmp_path / "in")], tmp_path)
    assert b["files"] == 5 and b["skipped_links"] == a["skipped_links"]
    assert b["totals"]["duplicate"] > 0 and b["reconciled"]


def test_local_inputs_found_as_spark_finds_them(spark: Any, tmp_path: Path) -> None:
    top = tmp_path / "in"
    _ndjson_corpus(top)
    for inputs in ([str(top)], [str(top / "export" / "*.ndjson")],
                   [str(top / "extra.ndjson"), f"file://{top}/copy"]):
        got, want = expand_local_inputs(inputs), expand_inputs(spark, inputs)
        assert got.files == want.files and got.skipped_links == want.skipped_links
    with pytest.raises(ConfigError, match="no such file"):
        expand_local_inputs([str(tmp_path / "absent")])
    with pytest.raises(ConfigError, match="local files only"):
        expand_local_inputs(["s3a://bucket/x"])


def test_percent_encoded_file_uris_name_the_same_files_in_both_engines(spark: Any, tmp_path: Path) -> None:
    """``Path.as_uri()`` of a folder with a space (``file:///.../my%20export``) is that folder for both
    engines, as for every other stage (``ehrfm.storage.local_path``), and the rows name the same files as a
    plain path's; a file literally named with ``%20`` is still read as it is."""
    top = tmp_path / "my export"
    _ndjson_corpus(top)
    odd = top / "odd%20name.ndjson"
    shutil.copy(sorted((top / "export").glob("Patient.*.ndjson"))[0], odd)
    plain = expand_local_inputs([str(top)])
    assert odd.name in {Path(f).name for f, _ in plain.files}
    for inputs in ([top.as_uri()], [(top / "export").as_uri() + "/*.ndjson", odd.as_uri()]):
        want = expand_local_inputs([str(top)] if len(inputs) == 1 else
                                   [str(top / "export" / "*.ndjson"), str(odd)])
        got_local, got_spark = expand_local_inputs(inputs), expand_inputs(spark, inputs)
        assert got_local.files == want.files and got_spark.files == want.files
    with pytest.raises(ConfigError, match="no such file"):
        expand_local_inputs([(tmp_path / "my%20export").as_uri()])  # encoded twice: no such folder


def test_stage_runs_the_local_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ehrfm.config.ingest import FhirIngestConfig
    from ehrfm.ingest.fhir.stage import resolve_engine, run
    from ehrfm.layout import Layout
    from ehrfm.synth.stage import run as synth

    layout = Layout(root=str(tmp_path))
    synth(SynthConfig(n_patients=20, seed=3, patients_per_file=8, progress=False), layout)
    summary = run(FhirIngestConfig(max_time="2030-01-01", engine="local"), layout)
    assert summary.subjects == 20 and summary.rejects == 0 and summary.reconciled
    saved = json.loads(layout.meds_paths.summary.read_text())
    assert saved["engine"] == "local" and saved["events"] == summary.events > 0

    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    monkeypatch.delenv("EHRFM_SPARK_MASTER", raising=False)
    assert FhirIngestConfig().engine == "auto" and resolve_engine(FhirIngestConfig()) == "local"
    assert resolve_engine(FhirIngestConfig(engine="auto")) == "local"
    assert resolve_engine(FhirIngestConfig(engine="auto", input=["file:///x", "/y"])) == "local"
    assert resolve_engine(FhirIngestConfig(engine="auto", input=["s3a://bucket/x"])) == "spark"
    assert resolve_engine(FhirIngestConfig(engine="auto", input=["/y"]), "viewfs://c/meds") == "spark"
    monkeypatch.setenv("EHRFM_SPARK_MASTER", "spark://host:7077")
    assert resolve_engine(FhirIngestConfig(engine="auto")) == "spark"
    with pytest.raises(ValueError, match="engine"):
        FhirIngestConfig(engine="polars")  # type: ignore[arg-type]
