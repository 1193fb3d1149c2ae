"""The in-memory record of one synthetic patient (plain tuples: cheap to build, turned into FHIR later).

All times are integer seconds since 1970-01-01 UTC, so equal instants compare and print identically
(e.g. ``Patient.deceasedDateTime`` == ``Encounter.period.end`` for an in-hospital death).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

DAY = 86400
HOUR = 3600
MINUTE = 60

READMISSION_TASK = "readmission_30d"
MORTALITY_TASK = "mortality_inhospital"


class Encounter(NamedTuple):
    """An encounter: class is AMB, EMER or IMP; ``diagnosis`` a key of the acute catalogs or None."""

    id: str
    cls: str
    start: int
    end: int
    diagnosis: str | None
    disposition: str  # "home", "snf" or "exp" (expired)


class ConditionRow(NamedTuple):
    """A Condition: ``category`` is "problem-list-item" (chronic) or "encounter-diagnosis"."""

    encounter_id: str
    key: str
    onset: int
    recorded: int
    category: str


class LabRow(NamedTuple):
    """A laboratory Observation (value already rounded to the reported decimals)."""

    encounter_id: str
    time: int
    key: str
    value: float


class VitalsRow(NamedTuple):
    """One vital-signs set: heart rate, SpO2 and a blood-pressure panel."""

    encounter_id: str
    time: int
    heart_rate: float
    spo2: float
    systolic: float
    diastolic: float


class MedRow(NamedTuple):
    """A MedicationRequest; ``by_reference`` orders a catalog Medication resource by reference."""

    encounter_id: str
    time: int
    key: str
    by_reference: bool


class ProcedureRow(NamedTuple):
    """A Procedure performed at ``time``."""

    encounter_id: str
    time: int
    key: str


class TruthRow(NamedTuple):
    """One index event with its planted true probability and the realised outcome."""

    task: str
    prediction_time: int
    true_prob: float
    outcome: int
    encounter_id: str


@dataclass
class PatientRecord:
    """Everything generated for one patient."""

    id: str
    sex: str  # FHIR administrative gender: "female" / "male"
    birth: int  # midnight of the birth date
    race: int  # index into catalog.RACES
    death: int | None = None
    encounters: list[Encounter] = field(default_factory=list)
    conditions: list[ConditionRow] = field(default_factory=list)
    labs: list[LabRow] = field(default_factory=list)
    vitals: list[VitalsRow] = field(default_factory=list)
    meds: list[MedRow] = field(default_factory=list)
    procedures: list[ProcedureRow] = field(default_factory=list)
    truth: list[TruthRow] = field(default_factory=list)
    site: str = "A"  # the site profile (ehrfm.synth.site) that codes the FHIR output
