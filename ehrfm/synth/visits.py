"""Content of the three encounter classes (ambulatory, emergency, inpatient) and, for inpatient stays,
the planted in-hospital mortality and 30-day readmission draws (formulas in :mod:`ehrfm.synth.risk`).
"""

from __future__ import annotations

from typing import NamedTuple

from ehrfm.synth import risk
from ehrfm.synth.record import (
    DAY,
    HOUR,
    MINUTE,
    MORTALITY_TASK,
    READMISSION_TASK,
    ConditionRow,
    Encounter,
    MedRow,
    ProcedureRow,
    TruthRow,
)
from ehrfm.synth.state import PatientState

READMIT_WINDOW = 30 * DAY
# spontaneous admissions are kept out of this window after a negative discharge (a margin past 30 days
# so that any reading of the window boundary gives the same label)
BLOCK_WINDOW = 32 * DAY
MAX_LOS_DAYS = 45.0

_AMB_DX = ("uri", "back_pain", "headache", "checkup", "sinusitis")
_AMB_DX_W = (3.0, 2.0, 1.5, 3.0, 1.5)
_INFECTION = ("pneumonia", "sepsis", "uti")


class StayResult(NamedTuple):
    """What the timeline needs after an inpatient stay."""

    end: int
    died: bool
    readmit_at: int | None  # start of the planted readmission (positive outcome)
    block_until: int | None  # no spontaneous admission before this (negative outcome)
    death_at: int | None  # planted out-of-hospital death after discharge


def ambulatory(s: PatientState, t: int) -> Encounter:
    """An outpatient visit starting at ``t`` (15-45 min): vitals, sometimes labs, diagnoses, refills."""
    d = s.d
    eid = s.next_id("enc")
    end = t + int(d.uniform(15, 45)) * MINUTE
    s.diagnose_chronic(eid, t)
    s.vitals(eid, t + 5 * MINUTE)
    n_chronic = len(s.recorded)
    if d.bernoulli(min(0.8, 0.3 + 0.1 * n_chronic)):
        s.panel(eid, t + 10 * MINUTE, s.kidney_at(t))
        if "dm" in s.recorded and d.bernoulli(0.5):
            s.lab(eid, t + 10 * MINUTE, "hba1c", d.normal(7.4, 0.9))
    dx = None
    if d.bernoulli(0.35):
        dx = d.choice(_AMB_DX, _AMB_DX_W)
        s.rec.conditions.append(ConditionRow(eid, dx, t, t, "encounter-diagnosis"))
        if dx in ("uri", "sinusitis") and d.bernoulli(0.4):
            s.rec.meds.append(MedRow(eid, t + 20 * MINUTE, "amoxicillin_clav", False))
        elif dx in ("back_pain", "headache") and d.bernoulli(0.5):
            s.rec.meds.append(MedRow(eid, t + 20 * MINUTE, "acetaminophen", False))
    for med in s.active_meds:
        if d.bernoulli(0.2):
            s.rec.meds.append(MedRow(eid, t + 20 * MINUTE, med, False))
    if ("hf" in s.recorded or "af" in s.recorded) and d.bernoulli(0.1):
        s.rec.procedures.append(ProcedureRow(eid, t + 15 * MINUTE, "ecg_office"))
    if "copd" in s.recorded and d.bernoulli(0.1):
        s.rec.procedures.append(ProcedureRow(eid, t + 15 * MINUTE, "spirometry"))
    return Encounter(eid, "AMB", t, end, dx, "home")


def _hospital_dx(s: PatientState, emergency: bool) -> str:
    c = s.recorded
    items = ("pneumonia", "sepsis", "uti", "aki", "hf_exac", "copd_exac", "nstemi", "gi_bleed", "chest_pain",
             "syncope")
    weights = (3.0, 1.5, 2.0, 0.8 + 1.5 * ("ckd" in c), 3.0 * ("hf" in c), 3.0 * ("copd" in c),
               1.0 + 0.5 * ("htn" in c), 1.0, 4.0 if emergency else 0.5, 2.0 if emergency else 0.5)
    return s.d.choice(items, weights)


def emergency(s: PatientState, t: int) -> Encounter:
    """An emergency visit (2-10 h) without admission: vitals, a panel with WBC, ECG, a diagnosis."""
    d = s.d
    eid = s.next_id("enc")
    end = t + int(min(10.0, d.lognormal(4.0, 0.35)) * HOUR)
    s.diagnose_chronic(eid, t)
    dx = _hospital_dx(s, emergency=True)
    s.rec.conditions.append(ConditionRow(eid, dx, t, t, "encounter-diagnosis"))
    s.vitals(eid, t + 10 * MINUTE, hr_shift=8.0)
    kidney = s.kidney_at(t) + (d.exponential(0.15) if dx in ("aki", "uti") else 0.0)
    s.panel(eid, t + 40 * MINUTE, kidney, wbc_shift=3.0 * (dx in _INFECTION),
            bnp="hf" in s.recorded or dx == "chest_pain")
    if dx in ("chest_pain", "syncope", "nstemi"):
        s.rec.procedures.append(ProcedureRow(eid, t + 20 * MINUTE, "ecg"))
    if d.bernoulli(0.3):
        s.rec.meds.append(MedRow(eid, t + HOUR, "acetaminophen", False))
    return Encounter(eid, "EMER", t, end, dx, "home")


def _admission_shock(s: PatientState, dx: str) -> float:
    """Acute kidney injury at admission (mg/dL added to the kidney state)."""
    d = s.d
    if dx == "aki":
        return d.uniform(0.8, 2.5)
    if dx == "sepsis":
        return d.uniform(0.2, 1.4)
    if dx == "hf_exac":
        return d.uniform(0.0, 0.8)
    return d.exponential(0.2)


def inpatient(s: PatientState, t: int, record_end: int) -> tuple[Encounter, StayResult]:
    """An inpatient stay admitted at ``t``, with the planted mortality and readmission outcomes."""
    d = s.d
    eid = s.next_id("enc")
    prior_1y = sum(1 for a in s.admissions if t - 365 * DAY <= a < t)
    s.admissions.append(t)
    s.diagnose_chronic(eid, t)
    dx = _hospital_dx(s, emergency=False)
    s.rec.conditions.append(ConditionRow(eid, dx, t, t, "encounter-diagnosis"))
    prior_cr = s.creatinine_until(t, 2, strict=True)
    k_adm = s.kidney_at(t) + _admission_shock(s, dx)
    hr = s.vitals(eid, t + 15 * MINUTE, hr_shift=10.0 + 15.0 * (dx == "sepsis"),
                  spo2_shift=-3.0 * (dx in ("pneumonia", "copd_exac")))
    t_panel = t + int(d.uniform(0.25, 3.0) * HOUR)
    adm = s.panel(eid, t_panel, k_adm, na_shift=-3.0 * (dx == "hf_exac") - 2.0 * (dx == "sepsis"),
                  hb_shift=-d.uniform(2.0, 4.0) * (dx == "gi_bleed") - d.uniform(0.0, 1.0),
                  wbc_shift=d.uniform(3.0, 9.0) * (dx in _INFECTION),
                  bnp="hf" in s.recorded or dx in ("hf_exac", "nstemi"))
    los = min(MAX_LOS_DAYS,
              d.lognormal(risk.los_median_days(s.age(t), s.chronic_at(t), dx, adm["creatinine"]), 0.6))
    end = min(t + int(los * DAY), record_end - HOUR)
    died = False
    if end - t > DAY:
        pt = t + DAY
        feats = risk.AdmissionFeatures(
            age=s.age(pt), chronic=s.chronic_at(pt), diagnosis=dx, creatinine=adm["creatinine"],
            creatinine_prior=prior_cr, sodium=adm["sodium"], potassium=adm["potassium"],
            hemoglobin=adm["hemoglobin"], heart_rate=hr,
        )
        p = risk.mortality_prob(feats)
        died = d.bernoulli(p)
        if died:
            end = pt + int(d.uniform(0.05, 1.0) * (end - pt))
        s.rec.truth.append(TruthRow(MORTALITY_TASK, pt, p, int(died), eid))
    # kidney course over the stay: partial recovery from the shock plus a random drift; the direction
    # of the drift is what the readmission model's trend feature picks up
    k_dis = k_adm - d.uniform(0.0, 1.0) * (k_adm - s.kidney) + d.normal(0.0, 0.4)
    span = max(1, end - t_panel)
    step = 0
    while True:
        step += 1
        tp = t_panel + step * 2 * DAY
        if tp >= end - 12 * HOUR:
            break
        s.panel(eid, tp, k_adm + (k_dis - k_adm) * (tp - t_panel) / span)
    if not died and end - t_panel > 6 * HOUR:
        s.panel(eid, end - int(d.uniform(1.0, 4.0) * HOUR), k_dis, wbc_shift=0.0)
        s.vitals(eid, end - 2 * HOUR)
    s.kidney, s.kidney_t = k_dis, end
    # orders depend only on what is known at admission: nothing before the mortality prediction time
    # (admission + 24 h) may carry information about later labs or the outcome
    _inpatient_orders(s, eid, t, end, dx, adm["creatinine"])
    disposition = "exp" if died else ("snf" if s.age(end) > 75 and d.bernoulli(0.3) else "home")
    enc = Encounter(eid, "IMP", t, end, dx, disposition)
    if died:
        return enc, StayResult(end, True, None, None, None)
    if end + READMIT_WINDOW > record_end:  # outcome not observable in the record: no index event
        return enc, StayResult(end, False, None, None, None)
    f = risk.DischargeFeatures(
        age=s.age(end), chronic=s.chronic_at(end), creatinine_last3=s.creatinine_until(end, 3),
        prior_admissions_1y=prior_1y, los_days=(end - t) / DAY, diagnosis=dx,
    )
    p = risk.readmission_prob(f)
    readmit = d.bernoulli(p)
    s.rec.truth.append(TruthRow(READMISSION_TASK, end, p, int(readmit), eid))
    if readmit:
        return enc, StayResult(end, False, end + int(d.uniform(0.5, 29.0) * DAY), None, None)
    death_at = None
    if d.bernoulli(risk.post_discharge_death_prob(f)):
        death_at = end + int(d.uniform(2.0, 365.0) * DAY)
    return enc, StayResult(end, False, None, end + BLOCK_WINDOW, death_at)


def _inpatient_orders(s: PatientState, eid: str, t: int, end: int, dx: str, adm_cr: float) -> None:
    """Procedures and medication orders of a stay."""
    d = s.d
    procs = s.rec.procedures
    if dx in ("pneumonia", "hf_exac", "copd_exac", "sepsis"):
        procs.append(ProcedureRow(eid, t + 2 * HOUR, "chest_xray"))
    if dx in ("hf_exac", "nstemi") and end - t > DAY and d.bernoulli(0.7):
        procs.append(ProcedureRow(eid, t + DAY - HOUR, "echo"))
    if dx == "nstemi" and d.bernoulli(0.6):
        procs.append(ProcedureRow(eid, t + 6 * HOUR, "pci"))
    if dx == "gi_bleed":
        procs.append(ProcedureRow(eid, t + 8 * HOUR, "endoscopy"))
    if adm_cr > 3.5 and end - t > DAY:
        procs.append(ProcedureRow(eid, t + 20 * HOUR, "hemodialysis"))
    meds = s.rec.meds
    if dx in _INFECTION:
        meds.append(MedRow(eid, t + 3 * HOUR, "ceftriaxone", True))
    if d.bernoulli(0.6):
        meds.append(MedRow(eid, t + 4 * HOUR, "heparin", True))
    if dx == "hf_exac":
        meds.append(MedRow(eid, t + 2 * HOUR, "furosemide_iv", True))
    if d.bernoulli(0.4):
        meds.append(MedRow(eid, t + 5 * HOUR, "acetaminophen", False))
    if dx == "nstemi":
        meds.append(MedRow(eid, t + HOUR, "nitroglycerin", False))
