"""Configs of ``ehrfm ingest fhir|mimic|meds`` (no Spark): round trips, errors naming the field, the CLI built
from them, and the output location (a URI stays a URI)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ehrfm.cli import build_parser, main, split_namespace, stage
from ehrfm.config.base import ConfigBase, ConfigError
from ehrfm.config.ingest import (
    DEFAULT_ROWS_PER_SHARD,
    FhirIngestConfig,
    IngestConfig,
    IngestSummary,
    MedsIngestConfig,
    MimicIngestConfig,
)
from ehrfm.config.spark import SparkConfig
from ehrfm.layout import MEDS_CODES, MEDS_DATASET_JSON, MEDS_SUBJECT_SPLITS, Layout

CONFIGS: list[ConfigBase] = [
    FhirIngestConfig(input=["a/*.ndjson", "hdfs:///fhir/b"], validate="full", sample_every=7,
                     max_time="2030-01-01", split_ratios=(0.6, 0.2, 0.2), split_seed=3, rows_per_shard=10,
                     dataset_name="x", spark=SparkConfig(master="local[1]", conf={"spark.x": "1"})),
    MimicIngestConfig(input="hdfs:///mimic", rules="my_rules.yaml", split_seed=1),
    MedsIngestConfig(input="m.parquet", numeric_col="value", time_col="t", dataset_name="demo"),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_round_trip(cfg: ConfigBase, tmp_path: Path) -> None:
    cls = type(cfg)
    assert cls.from_dict(cfg.to_dict()) == cfg
    assert cls.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    cfg.save(tmp_path / "c.yaml")
    assert cls.load(tmp_path / "c.yaml") == cfg
    changed = cls.load(tmp_path / "c.yaml", ["split_seed=9", "spark.master=local[2]"])
    assert changed.to_dict() == {**cfg.to_dict(), "split_seed": 9,
                                 "spark": {**cfg.to_dict()["spark"], "master": "local[2]"}}


def test_shared_fields_are_defined_once() -> None:
    shared = set(IngestConfig.__annotations__)
    assert shared == {"split_ratios", "split_seed", "rows_per_shard", "dataset_name", "spark"}
    for cls in (FhirIngestConfig, MimicIngestConfig, MedsIngestConfig):
        assert issubclass(cls, IngestConfig)
        assert not set(cls.__dict__["__annotations__"]) & shared, cls
    defaults = MedsIngestConfig()
    assert defaults.split_ratios == (0.8, 0.1, 0.1) and defaults.rows_per_shard == DEFAULT_ROWS_PER_SHARD


@pytest.mark.parametrize(
    ("cls", "data", "key"),
    [(FhirIngestConfig, {"split_ratios": [0.6, 0.6, 0.2]}, "split_ratios"),
     (MedsIngestConfig, {"split_ratios": [0.5, 0.5]}, "split_ratios"),
     (MimicIngestConfig, {"split_ratios": [1.2, -0.1, -0.1]}, "split_ratios"),
     (FhirIngestConfig, {"rows_per_shard": 0}, "rows_per_shard"),
     (FhirIngestConfig, {"sample_every": 0}, "sample_every"),
     (FhirIngestConfig, {"validate": "sometimes"}, "validate"),
     (FhirIngestConfig, {"input": "a.ndjson"}, "input"),
     (FhirIngestConfig, {"input": [" "]}, "input"),
     (FhirIngestConfig, {"inputs": ["a"]}, "inputs"),
     (MedsIngestConfig, {"dataset_name": " "}, "dataset_name"),
     (MimicIngestConfig, {"spark": {"master": 3}}, "spark.master"),
     (MedsIngestConfig, {"split_seed": "one"}, "split_seed")],
)
def test_bad_value_names_the_field(cls: type[ConfigBase], data: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        cls.from_dict(data)


@pytest.mark.parametrize(
    ("source", "flags", "docs"),
    [("fhir", ["--input", "--validate", "--sample_every", "--max_time"],
      ["Bundle JSON / NDJSON files", "Empty = the layout's synthetic population", "FHIR model validation",
       "FHIR date/time after which events are impossible"]),
     ("mimic", ["--input", "--rules"], ["MIMIC-IV root holding hosp/ and icu/", "Alternative rules YAML"]),
     ("meds", ["--input", "--subject_col", "--time_col", "--code_col", "--numeric_col", "--text_col"],
      ["A MEDS root (with data/)", "Numeric value column (default numeric_value, else value)"])],
)
def test_help_lists_the_fields_with_their_docstrings(source: str, flags: list[str], docs: list[str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["ingest", source, "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    shared = ["--split_ratios", "--split_seed", "--rows_per_shard", "--dataset_name", "--spark.master",
              "--spark.conf", "--root", "--meds"]
    for flag in flags + shared:
        assert flag in text, flag
    shared_docs = ["Fractions of subjects in train, tuning and held_out", "Target events per data/ shard"]
    for doc in docs + shared_docs:
        assert doc in text, doc


def test_flags_build_the_config_and_layout() -> None:
    ns = build_parser().parse_args(["ingest", "meds", "--input", "x.parquet", "--split_ratios",
                                    "[0.6,0.2,0.2]", "--spark.conf", "{spark.x: '1'}", "--meds", "out",
                                    "--numeric_col", "value"])
    cfg, layout = split_namespace(stage("ingest meds"), ns["ingest"]["meds"].as_dict())
    assert cfg == MedsIngestConfig(input="x.parquet", split_ratios=(0.6, 0.2, 0.2), numeric_col="value",
                                   spark=SparkConfig(conf={"spark.x": "1"}))
    assert layout.meds_paths.root == Path("out").absolute()  # executors write where the driver reads
    ns = build_parser().parse_args(["ingest", "fhir", "--input+", "a", "--input+", "b/*.json"])
    cfg, _ = split_namespace(stage("ingest fhir"), ns["ingest"]["fhir"].as_dict())
    assert isinstance(cfg, FhirIngestConfig) and cfg.input == ["a", "b/*.json"]


def test_errors_before_spark_name_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = ["--root", str(tmp_path)]
    cases = [
        (["ingest", "meds", "--input", "x", "--split_ratios", "[0.6,0.6,0.2]"], "split_ratios="),
        (["ingest", "mimic", *root], "input=None"),
        (["ingest", "meds", *root], "input=None"),
        (["ingest", "fhir", *root, "--max_time", "soon"], "max_time='soon'"),
        (["ingest", "fhir", *root], "no synthetic population"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"ehrfm ingest {argv[1]}: error:" in err and message in err, (argv, err)
    with pytest.raises(SystemExit) as e:
        main(["ingest", "fhir", "--validate", "sometimes"])
    assert e.value.code != 0 and "validate" in capsys.readouterr().err
    assert not (tmp_path / "meds").exists()


def test_output_is_the_layouts_meds_folder_and_a_uri_stays_intact() -> None:
    assert Layout(root="out").meds_uri == str(Path("out").absolute() / "meds")
    assert Layout(root="out", meds="/data/m/").meds_uri == str(Path("/data/m"))
    assert Layout(meds="hdfs:///meds/mimic/").meds_uri == "hdfs:///meds/mimic"
    assert Layout(root="s3://bucket/run").meds_uri == "s3://bucket/run/meds"
    assert Layout(root="s3://bucket/run", meds="local").meds_uri == str(Path("local").absolute())


def test_meds_file_names_match_the_meds_package() -> None:
    import meds.schema

    assert meds.schema.code_metadata_filepath == MEDS_CODES
    assert meds.schema.subject_splits_filepath == MEDS_SUBJECT_SPLITS
    assert meds.schema.dataset_metadata_filepath == MEDS_DATASET_JSON


def test_summary_round_trip() -> None:
    counts = {"in": 3, "mapped": 2, "events": 5, "rejected": 1, "skipped": 0}
    s = IngestSummary(source="fhir", output="hdfs:///m", dataset_name="fhir", events=5, subjects=1, codes=4,
                      rejects=1, splits={"train": 1, "tuning": 0, "held_out": 0}, by_type={"Patient": counts},
                      totals=counts, reconciled=True, seconds=1.5)
    assert IngestSummary.from_dict(yaml.safe_load(s.to_yaml())) == s
    with pytest.raises(ConfigError, match="source"):
        IngestSummary.from_dict({**s.to_dict(), "source": "csv"})
