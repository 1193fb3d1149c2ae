"""One patient's life in the record: demographics, chronic conditions, encounter arrivals and deaths.

Encounters arrive as Poisson processes (rates grow with the chronic burden and a per-patient frailty);
they are walked in time order so that every stay can change what comes next: a planted readmission is
inserted, a negative discharge keeps spontaneous admissions away for 32 days, a death ends the record.
"""

from __future__ import annotations

import heapq
import math

from ehrfm.config.synth import SynthConfig
from ehrfm.synth import visits
from ehrfm.synth.catalog import CHRONIC_KEYS, RACES
from ehrfm.synth.draw import Draw
from ehrfm.synth.record import DAY, HOUR, PatientRecord
from ehrfm.synth.risk import sigmoid
from ehrfm.synth.site import site_profile
from ehrfm.synth.state import PatientState

__all__ = ["YEAR", "SynthConfig", "simulate"]  # SynthConfig lives in ehrfm.config.synth

YEAR = 365.25 * DAY


def _chronic_onsets(d: Draw, birth: int, age_end: float, shift: dict[str, float]) -> dict[str, int]:
    """Which chronic conditions the patient gets by the end of the record, and when they begin
    (``shift``: the site's additions to the prevalence logits)."""
    a = age_end - 60.0
    has: dict[str, bool] = {}
    logits = {
        "htn": lambda: -0.9 + 0.06 * a,
        "dm": lambda: -1.8 + 0.03 * a + 0.5 * has["htn"],
        "hld": lambda: -1.0 + 0.04 * a,
        "hf": lambda: -3.0 + 0.06 * a + 0.7 * has["htn"] + 0.4 * has["dm"],
        "ckd": lambda: -2.9 + 0.05 * a + 0.7 * has["dm"] + 0.6 * has["htn"],
        "copd": lambda: -2.6 + 0.04 * a,
        "af": lambda: -3.4 + 0.07 * a + 0.4 * has["hf"],
    }
    onsets: dict[str, int] = {}
    for key in CHRONIC_KEYS:
        has[key] = d.bernoulli(sigmoid(logits[key]() + shift.get(key, 0.0)))
        if has[key]:
            onset_age = age_end - d.uniform(0.0, min(30.0, age_end - 18.0))
            onsets[key] = birth + int(onset_age * YEAR)
    return onsets


def _background_death(d: Draw, age0: float, t0: int) -> int:
    """Death time from a Gompertz hazard exp(-10.5 + 0.09 age) per year, by inversion from ``t0``."""
    e = d.exponential(1.0)
    x = math.exp(0.09 * age0) + 0.09 * e / math.exp(-10.5)
    return t0 + int((math.log(x) / 0.09 - age0) * YEAR)


def simulate(cfg: SynthConfig, index: int) -> PatientRecord:
    """Generate patient ``index`` (0-based) of the population ``cfg``: depends only on ``cfg.seed``, the
    calendar window (``start_year``, ``years``), the site and ``index``."""
    site = site_profile(cfg.site)
    d = Draw(cfg.seed, index, site.stream)
    start, end = cfg.start, cfg.end
    sex = "female" if d.bernoulli(0.52) else "male"
    age_end = 18.0 + 77.0 * d.uniform() ** site.age_exponent
    birth = (end - int(age_end * YEAR)) // DAY * DAY - int(d.uniform(0, 30)) * DAY
    age_end = (end - birth) / YEAR
    race = int(d.choice(tuple(str(i) for i in range(len(RACES))), tuple(r[2] for r in RACES)))
    rec = PatientRecord(id=str(index + 1), sex=sex, birth=birth, race=race, site=site.name)
    onsets = _chronic_onsets(d, birth, age_end, site.chronic_shift)
    adult = max(start, birth + int(18 * YEAR))
    entry = adult + int(d.uniform(0.0, 0.5) * (end - adult))
    s = PatientState(d, rec, onsets, entry, ckd_add=d.uniform(0.5, 1.2))

    n = len(onsets)
    frailty = d.lognormal(1.0, 0.5)
    age_f = math.exp(0.02 * (age_end - 65.0))
    rates = {  # per year (site A's factors are 1.0: exact, A's draws are unchanged)
        "AMB": site.amb_rate[0] + site.amb_rate[1] * n,
        "EMER": (0.06 + 0.07 * n) * frailty * site.emer_factor,
        "IMP": (0.015 + 0.045 * n + 0.05 * ("hf" in onsets)) * frailty * age_f * site.imp_factor,
    }
    heap: list[tuple[int, int, str, bool]] = []
    seq = 0
    for cls, rate in rates.items():
        for day in d.poisson_times(entry / DAY, end / DAY - 1.0, rate / 365.25):
            t = int(day * DAY)
            if cls == "AMB":  # clinic hours
                t = t // DAY * DAY + int(d.uniform(8.0, 17.0) * HOUR)
            heap.append((t, seq, cls, False))
            seq += 1
    heapq.heapify(heap)
    death = _background_death(d, s.age(entry), entry)
    busy_until, block_until, pending = entry, entry, None
    while heap:
        t, _, cls, forced = heapq.heappop(heap)
        if t >= death and not forced:
            break
        if not forced:
            # nothing overlaps a stay or runs into a planted readmission; blocked windows stay admission-free
            if t < busy_until or (pending is not None and t > pending - DAY):
                continue
            if cls == "IMP" and t < block_until:
                continue
        if cls == "AMB":
            enc = visits.ambulatory(s, t)
        elif cls == "EMER":
            enc = visits.emergency(s, t)
        else:
            enc, res = visits.inpatient(s, t, end)
            pending = None
            if res.died:
                rec.encounters.append(enc)
                rec.death = res.end
                return rec
            if res.readmit_at is not None:
                heapq.heappush(heap, (res.readmit_at, -1, "IMP", True))
                pending = res.readmit_at
            if res.block_until is not None:
                block_until = res.block_until
            if res.death_at is not None:
                death = min(death, res.death_at)
        rec.encounters.append(enc)
        busy_until = enc.end
        # no unmodelled death inside an encounter or within 2 days of its end (label engines read a death
        # up to 24 h after a discharge as a death in hospital)
        if enc.start <= death <= enc.end + 2 * DAY:
            death = enc.end + int(d.uniform(2.0, 30.0) * DAY)
        if pending is not None and death <= pending:  # the planted readmission must happen
            death = pending + int(d.uniform(30.0, 365.0) * DAY)
    if death < end:
        rec.death = max(death, busy_until + 2 * DAY)
    return rec
