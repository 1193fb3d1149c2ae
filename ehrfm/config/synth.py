"""``ehrfm synth`` config and summary.

:class:`SynthConfig` is the one typed config of the synthetic population: the CLI is built from it and the
generator (:func:`ehrfm.synth.generate`, :func:`ehrfm.synth.simulate`) takes it as is. It is also importable
as ``ehrfm.synth.SynthConfig``.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from typing import Literal

from ehrfm.config.base import ConfigBase, require


@dataclass(frozen=True)
class SynthConfig(ConfigBase):
    """``ehrfm synth``: a synthetic FHIR R4 population with planted, documented risk (NDJSON + truth)."""

    n_patients: int = 1000
    """Number of patients."""
    seed: int = 0
    """Random seed; patient i depends only on (seed, i), so N patients are a prefix of M > N patients."""
    start_year: int = 2015
    """First calendar year of the record (it starts on Jan 1 of this year)."""
    years: int = 10
    """Length of the record in years (it ends on Jan 1 of start_year + years; ages 18-95 are ages then)."""
    gzip: bool = False
    """Write .ndjson.gz files (deterministic bytes) instead of .ndjson."""
    patients_per_file: int = 0
    """Shard each resource type into <Type>.000.ndjson, <Type>.001.ndjson, ... of this many patients, like a
    FHIR bulk export (0: one file per resource type)."""
    progress: bool = True
    """Show a progress bar."""
    site: Literal["A", "B"] = "A"
    """Synthetic site: A (default) or B, a second hospital with the same planted risk model but another
    age / chronic-condition mix, visit rates, local lab codes and local encounter-class codes
    (docs/synthetic_population.md, "Site B"; ehrfm/synth/site.py)."""

    def __post_init__(self) -> None:
        require(self.n_patients >= 1, "n_patients", self.n_patients, "must be >= 1")
        require(1900 <= self.start_year <= 2100, "start_year", self.start_year, "must be in 1900..2100")
        require(1 <= self.years <= 50, "years", self.years, "must be in 1..50")
        require(self.patients_per_file >= 0, "patients_per_file", self.patients_per_file, "must be >= 0")
        require(self.site in ("A", "B"), "site", self.site, "must be A or B")

    @property
    def start(self) -> int:
        """Record start (epoch seconds)."""
        return calendar.timegm((self.start_year, 1, 1, 0, 0, 0))

    @property
    def end(self) -> int:
        """Record end (epoch seconds): ages 18-95 are ages at this instant."""
        return calendar.timegm((self.start_year + self.years, 1, 1, 0, 0, 0))


@dataclass
class SynthSummary(ConfigBase):
    """What ``ehrfm synth`` wrote (also saved beside the truth table as ``truth/summary.yaml``)."""

    config: SynthConfig
    """The config the population was generated with."""
    output: str
    """Folder of the population (FHIR NDJSON files and truth/)."""
    truth: str
    """The truth table: one row per index event with its planted probability and outcome."""
    deaths: int
    """Patients who died within the record."""
    in_hospital_deaths: int
    """Patients who died during an inpatient stay."""
    encounters: dict[str, int]
    """Encounters per class (AMB, EMER, IMP)."""
    resources: dict[str, int]
    """FHIR resources written per resource type."""
    tasks: dict[str, dict[str, float]]
    """Per planted task: index_events, prevalence, mean_true_prob, oracle_auroc."""
    seconds: float = 0.0
    """Wall-clock seconds of the generation."""
    cpu_seconds: float = 0.0
    """CPU seconds of the generation (wall time overstates the cost on a shared machine)."""
