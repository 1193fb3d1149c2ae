"""Mutable state of one patient during simulation: chronic conditions, the latent kidney process and the
lab/vital value models. Encounter content (:mod:`ehrfm.synth.visits`) reads and updates it.
"""

from __future__ import annotations

import math

from ehrfm.synth.catalog import CHRONIC_MEDS, LABS
from ehrfm.synth.draw import Draw
from ehrfm.synth.record import DAY, ConditionRow, LabRow, MedRow, PatientRecord, VitalsRow

# Ornstein-Uhlenbeck kidney state between stays: mean reversion time (days) and stationary sd (mg/dL)
KIDNEY_TAU_DAYS = 120.0
KIDNEY_SD = 0.10


class PatientState:
    """State of one patient; times are integer seconds unless a name says days."""

    def __init__(self, draw: Draw, rec: PatientRecord, onsets: dict[str, int], entry: int,
                 ckd_add: float) -> None:
        self.d = draw
        self.rec = rec
        self.onsets = onsets  # chronic key -> onset time (may precede the entry into the record)
        self.entry = entry
        self.recorded: dict[str, int] = {}  # chronic key -> time it was recorded
        self.active_meds: list[str] = []
        self.n_enc = 0
        # creatinine = base + CKD excess (after CKD onset) + kidney state + assay noise
        self.cr_base = (0.75 if rec.sex == "female" else 0.95) * math.exp(draw.normal(0.0, 0.1))
        self.ckd_add = ckd_add
        self.kidney = draw.normal(0.0, KIDNEY_SD)
        self.kidney_t = entry
        self.creatinine: list[tuple[int, float]] = []  # (time, value) of every creatinine written
        self.hb_base = ((13.3 if rec.sex == "female" else 14.6) - 1.2 * ("ckd" in onsets) + draw.normal(0.0,
                                                                                                        0.7))
        self.glucose_base = 95.0 + ("dm" in onsets) * (45.0 + abs(draw.normal(0.0, 30.0)))
        self.hr_base = draw.normal(74.0, 7.0)
        self.sbp_base = draw.normal(122.0, 9.0) + 14.0 * ("htn" in onsets)
        self.admissions: list[int] = []  # inpatient admission start times

    # --- identity and age ---------------------------------------------------------------------------------
    def next_id(self, prefix: str) -> str:
        """A new resource id ``<prefix>-<patient>-<n>`` (unique within the population)."""
        self.n_enc += 1
        return f"{prefix}-{self.rec.id}-{self.n_enc}"

    def age(self, t: int) -> float:
        """Age in years at time ``t``."""
        return (t - self.rec.birth) / (365.25 * DAY)

    def chronic_at(self, t: int) -> frozenset[str]:
        """Chronic conditions recorded at or before ``t`` (what a model can see)."""
        return frozenset(k for k, r in self.recorded.items() if r <= t)

    # --- chronic conditions and their medications ---------------------------------------------------------
    def diagnose_chronic(self, enc_id: str, t: int) -> None:
        """Record every chronic condition whose onset has passed, and start its medications."""
        for key, onset in self.onsets.items():
            if key in self.recorded or onset > t:
                continue
            self.recorded[key] = t
            # a condition that began before the patient entered the record keeps its historical onset
            self.rec.conditions.append(
                ConditionRow(enc_id, key, onset if onset < self.entry else t, t, "problem-list-item")
            )
            for med in CHRONIC_MEDS[key]:
                self.active_meds.append(med)
                self.rec.meds.append(MedRow(enc_id, t + 300, med, False))

    # --- labs -----------------------------------------------------------------------------------------
    def kidney_at(self, t: int) -> float:
        """Advance the kidney state (mean-reverting) to ``t`` and return it."""
        dt = max(0, t - self.kidney_t) / DAY
        if dt > 0:
            a = math.exp(-dt / KIDNEY_TAU_DAYS)
            self.kidney = self.kidney * a + KIDNEY_SD * math.sqrt(1.0 - a * a) * self.d.normal()
            self.kidney_t = t
        return self.kidney

    def creatinine_mean(self, t: int, kidney: float) -> float:
        """Expected creatinine (mg/dL) at ``t`` for a given kidney state."""
        ckd = self.ckd_add if self.onsets.get("ckd", t + 1) <= t else 0.0
        return self.cr_base + ckd + kidney

    def lab(self, enc_id: str, t: int, key: str, value: float) -> float:
        """Round ``value`` as reported, write the lab row and return the written value."""
        v = round(value, LABS[key].decimals)
        if LABS[key].decimals == 0:
            v = float(int(v))
        self.rec.labs.append(LabRow(enc_id, t, key, v))
        if key == "creatinine":
            self.creatinine.append((t, v))
        return v

    def panel(self, enc_id: str, t: int, kidney: float, *, na_shift: float = 0.0, hb_shift: float = 0.0,
              wbc_shift: float | None = None, bnp: bool = False) -> dict[str, float]:
        """Write a basic metabolic panel (+ WBC, BNP when asked) at ``t``; returns the written values."""
        d = self.d
        cr = self.lab(enc_id, t, "creatinine",
                      max(0.3, self.creatinine_mean(t, kidney) + d.normal(0.0, 0.04)))
        out = {"creatinine": cr}
        out["glucose"] = self.lab(enc_id, t, "glucose", max(50.0, self.glucose_base + d.normal(0.0, 12.0)))
        out["sodium"] = self.lab(enc_id, t, "sodium", d.normal(139.0, 2.5) + na_shift)
        out["potassium"] = self.lab(enc_id, t, "potassium", max(2.8, d.normal(4.2, 0.35) + 0.25 * (cr - 1.0)))
        out["hemoglobin"] = self.lab(enc_id, t, "hemoglobin",
                                     max(5.0, self.hb_base + hb_shift + d.normal(0.0, 0.5)))
        if wbc_shift is not None:
            out["wbc"] = self.lab(enc_id, t, "wbc", max(1.0, d.normal(7.2, 1.6) + wbc_shift))
        if bnp:
            base = 350.0 if "hf" in self.recorded else 40.0
            out["bnp"] = self.lab(enc_id, t, "bnp", d.lognormal(base, 0.5))
        return out

    def vitals(self, enc_id: str, t: int, *, hr_shift: float = 0.0, spo2_shift: float = 0.0) -> float:
        """Write a vital-signs set at ``t``; returns the heart rate written."""
        d = self.d
        hr = float(round(max(40.0, self.hr_base + hr_shift + d.normal(0.0, 6.0))))
        spo2 = float(round(min(100.0, d.normal(97.5, 1.0) - 3.0 * ("copd" in self.recorded) + spo2_shift)))
        sbp = float(round(self.sbp_base + d.normal(0.0, 8.0)))
        dbp = float(round(sbp * 0.62 + d.normal(0.0, 5.0)))
        self.rec.vitals.append(VitalsRow(enc_id, t, hr, spo2, sbp, dbp))
        return hr

    def creatinine_until(self, t: int, n: int, strict: bool = False) -> tuple[float, ...]:
        """The last ``n`` creatinine values written at or before ``t`` (strictly before if ``strict``)."""
        vals = [v for s, v in self.creatinine if (s < t if strict else s <= t)]
        return tuple(vals[-n:])
