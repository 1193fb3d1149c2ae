"""``ehrfm ingest fhir|mimic|meds`` configs and the summary they share.

The options every source has (subject splits, shard size, dataset name, Spark) are the fields of
:class:`IngestConfig`, which each source's config extends with its input and its own options. The output is
the layout's MEDS folder (``--meds``, default ``<root>/meds``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from ehrfm.atomic import OverwriteOption
from ehrfm.config.base import ConfigBase, require
from ehrfm.config.spark import SparkConfig

DEFAULT_ROWS_PER_SHARD = 2_000_000
"""Target events per ``data/`` shard when nothing else says."""


@dataclass
class IngestConfig(OverwriteOption):
    """Options shared by every ``ehrfm ingest <source>``: subject splits, shard size, dataset name, Spark."""

    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    """Fractions of subjects in train, tuning and held_out (each subject's split is a hash of its subject_id
    and split_seed, so it never depends on the other subjects)."""
    split_seed: int = 0
    """Seed of the subject-id hash that assigns the splits."""
    rows_per_shard: int = DEFAULT_ROWS_PER_SHARD
    """Target events per data/ shard (a subject is never split across shards)."""
    dataset_name: str | None = None
    """dataset_name in metadata/dataset.json (default: fhir; MIMIC-IV; the MEDS input's own name, else its
    folder or file name)."""
    spark: SparkConfig = field(default_factory=SparkConfig)
    """Spark session settings."""

    def __post_init__(self) -> None:
        r = self.split_ratios
        require(len(r) == 3, "split_ratios", r, "expected 3 values (train, tuning, held_out)")
        require(all(math.isfinite(x) and x >= 0 for x in r), "split_ratios", r, "must be finite and >= 0")
        require(abs(sum(r) - 1.0) <= 1e-6, "split_ratios", r, f"must sum to 1 (sum {sum(r)})")
        require(self.rows_per_shard >= 1, "rows_per_shard", self.rows_per_shard, "must be >= 1")
        name = self.dataset_name
        require(name is None or bool(name.strip()), "dataset_name", name, "must not be blank")


@dataclass
class DatasetVersionOption(ConfigBase):
    """``dataset_version`` of metadata/dataset.json, for the sources that can say which release they read."""

    dataset_version: str | None = None
    """dataset_version in metadata/dataset.json. Default: the source's own (MIMIC-IV: the release named by
    the input path, e.g. .../mimiciv/2.2/ or .../mimic-iv-demo-2.2/; MEDS input: its dataset.json; FHIR has
    none), else "unknown" --
    never the ingest date, which would make two ingests of one release look like two versions."""

    def check_dataset_version(self) -> None:
        """Refuse a blank version (the configs' ``__post_init__`` call it; IngestConfig's does not chain)."""
        v = self.dataset_version
        require(v is None or bool(v.strip()), "dataset_version", v, "must not be blank")


@dataclass
class FhirIngestConfig(IngestConfig, DatasetVersionOption):
    """``ehrfm ingest fhir``: FHIR R4 Bundles / NDJSON -> a MEDS dataset with rejects and a summary (Spark).

    Every input record is mapped, rejected (with file, index and reason), skipped by design or a duplicate
    (an identical copy of a resource read elsewhere); per resource type, in = mapped + rejected + skipped +
    duplicate. Conflicting versions of a resource (same type and id) keep the latest meta.lastUpdated, else
    the last in path order; the others are rejects. Folders are read by real path: each file once, link
    cycles skipped and listed in summary.json."""

    input: list[str] = field(default_factory=list)
    """Bundle JSON / NDJSON files (.json, .ndjson, .jsonl, optionally .gz), folders (searched recursively) or
    globs; local paths or URIs. Empty = the layout's synthetic population (the output of ehrfm synth)."""
    validate: Literal["auto", "none", "full"] = "auto"
    """FHIR model validation: full = every mapped resource (invalid ones are rejected); auto = rejected
    records plus a 1-in-sample_every sample of mapped ones, reported in summary.json; none = never."""
    sample_every: int = 50
    """With validate=auto, validate 1 mapped record in this many."""
    max_time: str | None = None
    """FHIR date/time after which events are impossible (default: now + 1 day); fix it to make reruns
    reproducible, e.g. '2030-01-01'."""
    anonymous_subjects: bool = False
    """Keep the records of a subject that has no valid Patient (rejected, or not in the input) as an
    anonymous subject (no birth, no sex); by default they are rejects ("subject's Patient rejected: ...")."""
    fhir_version: Literal["auto", "STU3", "R4", "R4B", "R5"] = "auto"
    """FHIR version the resources are validated in: auto = detected per resource from its shape, profile
    and source (docs/fhir_versions.md); a version = every resource validated with that version's models."""
    engine: Literal["auto", "spark", "local"] = "auto"
    """Engine that runs the mapping: spark (local mode or a cluster), local (a process per core on this
    machine, no JVM; same per-record code and output, parity-tested; local inputs only), auto (local unless
    --spark.master, $EHRFM_SPARK_MASTER or spark-submit name a non-local master)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_dataset_version()
        require(self.engine in ("auto", "spark", "local"), "engine", self.engine,
                "expected auto, spark or local")
        require(self.sample_every >= 1, "sample_every", self.sample_every, "must be >= 1")
        require(all(p.strip() for p in self.input), "input", self.input, "blank path")


@dataclass
class MimicIngestConfig(IngestConfig, DatasetVersionOption):
    """``ehrfm ingest mimic``: MIMIC-IV hosp/ + icu/ CSV(.gz) -> a MEDS dataset via a rules table (Spark, or
    polars on this machine: --engine)."""

    input: str | None = None
    """MIMIC-IV root holding hosp/ and icu/ (local path or URI); required."""
    rules: str | None = None
    """Alternative rules YAML (default: the rules.yaml packaged with ehrfm.ingest.mimic)."""
    engine: Literal["auto", "spark", "local"] = "auto"
    """Engine that runs the rules: spark (local mode or a cluster), local (polars on this machine, no JVM;
    same rules and output, parity-tested), auto (local unless --spark.master, $EHRFM_SPARK_MASTER or
    spark-submit name a non-local master)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_dataset_version()
        require(self.engine in ("auto", "spark", "local"), "engine", self.engine,
                "expected auto, spark or local")


@dataclass
class MedsIngestConfig(IngestConfig, DatasetVersionOption):
    """``ehrfm ingest meds``: a MEDS dataset or a MEDS-like events parquet -> an ehrfm MEDS dataset (Spark).

    Rows without a subject id or code become rejects; every other row becomes one event."""

    input: str | None = None
    """A MEDS root (with data/), a folder of parquet files or one parquet file (local path or URI);
    required."""
    subject_col: str | None = None
    """Subject id column (default subject_id)."""
    time_col: str | None = None
    """Time column (default time; strings are parsed)."""
    code_col: str | None = None
    """Code column (default code)."""
    numeric_col: str | None = None
    """Numeric value column (default numeric_value, else value)."""
    text_col: str | None = None
    """Text value column (default text_value when present)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_dataset_version()


@dataclass
class IngestSummary(ConfigBase):
    """What ``ehrfm ingest <source>`` wrote (the full record, per source, is the dataset's summary.json)."""

    source: Literal["fhir", "mimic", "meds"]
    """The source type."""
    output: str
    """The MEDS dataset folder (local path or URI)."""
    dataset_name: str
    """dataset_name in metadata/dataset.json."""
    events: int
    """Events written to data/."""
    subjects: int
    """Distinct subjects in data/."""
    codes: int
    """Distinct codes (rows of metadata/codes.parquet)."""
    rejects: int
    """Rows of rejects/ (input records that did not become events, with reasons)."""
    splits: dict[str, int]
    """Subjects per split (train, tuning, held_out)."""
    by_type: dict[str, dict[str, int]]
    """Per input type (FHIR resource type, MIMIC rule, MEDS input): in, mapped, events, rejected, skipped,
    duplicate."""
    totals: dict[str, int]
    """Sums of by_type over the input types."""
    reconciled: bool
    """Every input type has in == mapped + rejected + skipped + duplicate."""
    seconds: float
    """Wall-clock seconds of the ingest (Spark session start excluded)."""
    after_death: dict[str, int] = field(default_factory=dict)
    """Events kept although dated after their subject's first MEDS_DEATH, per source column value."""
    skipped_links: int = 0
    """Input links not followed (link cycles, files or folders already read); summary.json lists them."""
