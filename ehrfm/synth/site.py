"""Site profiles: what differs between the synthetic hospitals A (the default) and B (a second site for
transfer studies). Documented, with the same numbers, in docs/synthetic_population.md ("Site B").

Both sites draw their outcomes from the SAME planted risk model (:mod:`ehrfm.synth.risk`, unchanged):
P(outcome | features) is identical, so the oracle (``true_prob``) applies at both and every difference
in base rates comes from the inputs of that model (age, chronic conditions, prior admissions, creatinine)
— a pure covariate shift. On top of it B codes some data differently (site-local lab codes without LOINC,
site-local encounter-class codes), the shift a model meets when it moves to another hospital's EHR.

Site A's numbers are neutral elements (shift 0.0, factor 1.0, exponent 0.7) so that A's output stays
byte-identical to the generator before sites existed: ``x + 0.0`` and ``x * 1.0`` are exact in IEEE
arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ehrfm.synth.catalog import ENCOUNTER_CLASSES, LABS, LOINC, Code, Lab

# site B's own code systems (the FHIR mapper turns an unknown system into its upper-cased last path
# segment: LAB//LOCAL-LAB//CREAT, see ehrfm/ingest/fhir/rules.py Rules.system_name)
SITE_B_LAB_SYSTEM = "http://lab.site-b.example.org/fhir/CodeSystem/local-lab"
SITE_B_CLASS_SYSTEM = "http://site-b.example.org/fhir/CodeSystem/encounter-class"


@dataclass(frozen=True)
class SiteProfile:
    """The numbers and codings of one synthetic site."""

    name: str
    """``"A"`` or ``"B"``."""
    stream: int
    """First word of every patient's random-stream key: B's patients are new people, not A's shifted."""
    age_exponent: float
    """Age at the end of the record is ``18 + 77·U^age_exponent`` (smaller: older)."""
    chronic_shift: dict[str, float] = field(default_factory=dict)
    """Added to the prevalence logit of each chronic condition (keys of catalog.CHRONIC)."""
    amb_rate: tuple[float, float] = (0.8, 0.5)
    """Ambulatory visits per year: ``amb_rate[0] + amb_rate[1]·n`` (n chronic conditions)."""
    emer_factor: float = 1.0
    """Factor on the emergency-visit rate."""
    imp_factor: float = 1.0
    """Factor on the spontaneous inpatient-admission rate."""
    local_labs: dict[str, Lab] = field(default_factory=dict)
    """Labs coded with a site-local code (system ``lab_system``) instead of LOINC, by catalog key."""
    lab_system: str = ""
    """Code system of ``local_labs``."""
    encounter_classes: dict[str, Code] = field(default_factory=lambda: dict(ENCOUNTER_CLASSES))
    """``Encounter.class`` coding per internal class (AMB, EMER, IMP)."""

    def lab_coding(self, key: str) -> Code:
        """The coding of lab ``key`` at this site (LOINC unless the site codes it locally)."""
        local = self.local_labs.get(key)
        if local is not None:
            return Code(self.lab_system, local.code, local.display)
        return Code(LOINC, LABS[key].code, LABS[key].display)


SITE_A = SiteProfile(name="A", stream=0x5EED, age_exponent=0.7)

# B: an older, more cardio-renal referral population seen less often in clinic and more often in the
# emergency department and the wards; its lab and ADT systems use local codes.
SITE_B = SiteProfile(
    name="B",
    stream=0x5EEB,
    age_exponent=0.45,
    chronic_shift={"dm": 0.6, "hf": 0.8, "ckd": 0.9, "copd": -1.0},
    amb_rate=(0.5, 0.35),
    emer_factor=1.5,
    imp_factor=1.5,
    local_labs={
        "creatinine": Lab("CREAT", "Creatinine, serum", "mg/dL", 2),
        "hemoglobin": Lab("HGB", "Hemoglobin, whole blood", "g/dL", 1),
        "bnp": Lab("BNP", "B-type natriuretic peptide", "pg/mL", 0),
    },
    lab_system=SITE_B_LAB_SYSTEM,
    # local codes that match no class word: the mapper falls back to keywords in the display
    # ("inpatient", "emergency"; "clinic" is itself a class word)
    encounter_classes={
        "AMB": Code(SITE_B_CLASS_SYSTEM, "CLIN", "Clinic visit"),
        "EMER": Code(SITE_B_CLASS_SYSTEM, "ERV", "Emergency room visit"),
        "IMP": Code(SITE_B_CLASS_SYSTEM, "INPT", "Inpatient stay"),
    },
)

SITES: dict[str, SiteProfile] = {"A": SITE_A, "B": SITE_B}

__all__ = ["SITES", "SITE_A", "SITE_B", "SITE_B_CLASS_SYSTEM", "SITE_B_LAB_SYSTEM", "SiteProfile",
           "site_profile"]


def site_profile(name: str) -> SiteProfile:
    """The profile of site ``name`` (``"A"`` or ``"B"``)."""
    try:
        return SITES[name]
    except KeyError:
        raise ValueError(f"site: unknown site {name!r} (known: {', '.join(SITES)})") from None
