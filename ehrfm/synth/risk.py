"""The planted risk models: the exact formulas that make the synthetic outcomes (documented, with the same
numbers, in docs/synthetic_population.md — change both together).

Every model is a logistic function of features that are all visible in the generated FHIR data at the
prediction time, so a perfect model of the data reaches the oracle AUROC recorded in the truth table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def sigmoid(x: float) -> float:
    """The logistic function 1 / (1 + exp(-x))."""
    return 1.0 / (1.0 + math.exp(-x))


def _clip(x: float, low: float, high: float) -> float:
    return low if x < low else high if x > high else x


@dataclass(frozen=True)
class DischargeFeatures:
    """What the readmission and post-discharge death models see at discharge (prediction time).

    ``creatinine_last3`` are the last three creatinine values (mg/dL) at or before discharge, oldest
    first (fewer when fewer exist). ``chronic`` holds the chronic-condition keys diagnosed (recorded)
    at or before discharge. ``prior_admissions_1y`` counts inpatient admissions that started in the
    365 days before this admission.
    """

    age: float
    chronic: frozenset[str]
    creatinine_last3: tuple[float, ...]
    prior_admissions_1y: int
    los_days: float
    diagnosis: str


@dataclass(frozen=True)
class AdmissionFeatures:
    """What the in-hospital mortality model sees at admission + 24 h.

    Lab values are those of the admission panel (drawn within 3 h of admission); ``creatinine_prior``
    are the (at most two) creatinine values measured before the admission, oldest first.
    """

    age: float
    chronic: frozenset[str]
    diagnosis: str
    creatinine: float
    creatinine_prior: tuple[float, ...]
    sodium: float
    potassium: float
    hemoglobin: float
    heart_rate: float


def creatinine_trend(values: tuple[float, ...]) -> float:
    """Last minus first of the last three creatinine values (0 with fewer than two): the ORDER signal.

    A rising series (1.0, 1.3, 1.6) and a falling one (1.6, 1.3, 1.0) have the same mean and count but
    opposite trends; only a model that sees the order of events can separate them.
    """
    if len(values) < 2:
        return 0.0
    return values[-1] - values[0]


def readmission_logit(f: DischargeFeatures) -> float:
    """Log-odds of an inpatient admission starting within 30 days after discharge."""
    trend = _clip(creatinine_trend(f.creatinine_last3), -1.5, 1.5)
    c = f.chronic
    return (
        -3.0
        + 2.4 * trend
        + 0.55 * ("hf" in c)
        + 0.45 * ("copd" in c)
        + 0.35 * ("ckd" in c)
        + 0.25 * ("dm" in c)
        + 0.02 * (f.age - 65.0)
        + 0.45 * min(f.prior_admissions_1y, 3)
        + 0.03 * min(f.los_days, 20.0)
        + 0.4 * (f.diagnosis in ("hf_exac", "copd_exac"))
    )


def readmission_prob(f: DischargeFeatures) -> float:
    """True probability of 30-day readmission (see :func:`readmission_logit`)."""
    return sigmoid(readmission_logit(f))


def mortality_logit(f: AdmissionFeatures) -> float:
    """Log-odds of death before discharge, for stays longer than 24 h, at admission + 24 h."""
    jump = 0.0
    if f.creatinine_prior:
        jump = f.creatinine - sum(f.creatinine_prior) / len(f.creatinine_prior)
    c = f.chronic
    return (
        -4.4
        + 0.045 * (f.age - 65.0)
        + 1.3 * _clip(jump, -1.0, 3.0)
        + 1.2 * (f.diagnosis == "sepsis")
        + 0.5 * (f.diagnosis in ("nstemi", "gi_bleed", "pneumonia"))
        + 0.6 * ("hf" in c)
        + 0.3 * ("ckd" in c)
        + 0.15 * max(0.0, 135.0 - f.sodium)
        + 0.8 * (f.potassium > 5.3)
        + 0.25 * max(0.0, 10.0 - f.hemoglobin)
        + 0.02 * max(0.0, f.heart_rate - 100.0)
    )


def mortality_prob(f: AdmissionFeatures) -> float:
    """True probability of in-hospital death (see :func:`mortality_logit`)."""
    return sigmoid(mortality_logit(f))


def post_discharge_death_prob(f: DischargeFeatures) -> float:
    """Probability of dying out of hospital within 365 days of a discharge not followed by a readmission."""
    c = f.chronic
    last = f.creatinine_last3[-1] if f.creatinine_last3 else 1.0
    return sigmoid(
        -3.6
        + 0.05 * (f.age - 65.0)
        + 0.6 * ("hf" in c)
        + 0.5 * ("copd" in c)
        + 0.3 * ("ckd" in c)
        + 0.6 * _clip(last - 1.3, 0.0, 3.0)
    )


def los_median_days(age: float, chronic: frozenset[str], diagnosis: str, creatinine: float) -> float:
    """Median inpatient length of stay (days); the stay is log-normal around it with sigma 0.6."""
    base = {"sepsis": 6.0, "pneumonia": 4.5, "hf_exac": 4.5, "copd_exac": 4.0, "aki": 4.0, "nstemi": 3.5,
            "gi_bleed": 3.5}.get(diagnosis, 2.5)
    return base * math.exp(0.01 * (age - 65.0) + 0.15 * ("hf" in chronic) + 0.2 * _clip(creatinine - 1.2, 0.0,
                                                                                        3.0))


def background_death_hazard_per_year(age: float) -> float:
    """Gompertz yearly hazard of dying outside any modelled stay (age in years)."""
    return math.exp(-10.5 + 0.09 * age)
