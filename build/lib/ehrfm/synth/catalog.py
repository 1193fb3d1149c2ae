"""Code tables of the synthetic population, kept as data (ICD-10-CM, LOINC, RxNorm, SNOMED CT, CPT).

Codes are chosen to look like a real US hospital extract; displays are informative, not authoritative
(the generator is not a terminology server). Every table is keyed by a short internal name used by
:mod:`ehrfm.synth.timeline`; :mod:`ehrfm.synth.fhir` turns the keys into FHIR codings.
"""

from __future__ import annotations

from typing import NamedTuple

ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
SNOMED = "http://snomed.info/sct"
CPT = "http://www.ama-assn.org/go/cpt"
UCUM = "http://unitsofmeasure.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


class Code(NamedTuple):
    """One coding: system URL, code, display."""

    system: str
    code: str
    display: str


class Lab(NamedTuple):
    """A LOINC observation with its UCUM unit and the number of decimals it is reported with."""

    code: str
    display: str
    unit: str
    decimals: int


# --- conditions ---------------------------------------------------------------------------------------
# chronic conditions: key -> ICD-10-CM. The order matters: later conditions depend on earlier ones.
CHRONIC: dict[str, Code] = {
    "htn": Code(ICD10, "I10", "Essential (primary) hypertension"),
    "dm": Code(ICD10, "E11.9", "Type 2 diabetes mellitus without complications"),
    "hld": Code(ICD10, "E78.5", "Hyperlipidemia, unspecified"),
    "hf": Code(ICD10, "I50.9", "Heart failure, unspecified"),
    "ckd": Code(ICD10, "N18.3", "Chronic kidney disease, stage 3 (moderate)"),
    "copd": Code(ICD10, "J44.9", "Chronic obstructive pulmonary disease, unspecified"),
    "af": Code(ICD10, "I48.91", "Unspecified atrial fibrillation"),
}
CHRONIC_KEYS = tuple(CHRONIC)

# principal diagnoses of emergency and inpatient encounters
ACUTE_HOSPITAL: dict[str, Code] = {
    "pneumonia": Code(ICD10, "J18.9", "Pneumonia, unspecified organism"),
    "sepsis": Code(ICD10, "A41.9", "Sepsis, unspecified organism"),
    "uti": Code(ICD10, "N39.0", "Urinary tract infection, site not specified"),
    "aki": Code(ICD10, "N17.9", "Acute kidney failure, unspecified"),
    "hf_exac": Code(ICD10, "I50.23", "Acute on chronic systolic (congestive) heart failure"),
    "copd_exac": Code(ICD10, "J44.1", "Chronic obstructive pulmonary disease with (acute) exacerbation"),
    "nstemi": Code(ICD10, "I21.4", "Non-ST elevation (NSTEMI) myocardial infarction"),
    "gi_bleed": Code(ICD10, "K92.2", "Gastrointestinal hemorrhage, unspecified"),
    "chest_pain": Code(ICD10, "R07.9", "Chest pain, unspecified"),
    "syncope": Code(ICD10, "R55", "Syncope and collapse"),
}
# diagnoses of outpatient visits
ACUTE_AMB: dict[str, Code] = {
    "uri": Code(ICD10, "J06.9", "Acute upper respiratory infection, unspecified"),
    "back_pain": Code(ICD10, "M54.50", "Low back pain, unspecified"),
    "headache": Code(ICD10, "R51.9", "Headache, unspecified"),
    "checkup": Code(ICD10, "Z00.00",
                    "Encounter for general adult medical examination without abnormal findings"),
    "sinusitis": Code(ICD10, "J01.90", "Acute sinusitis, unspecified"),
}

# --- observations ---------------------------------------------------------------------------------------
LABS: dict[str, Lab] = {
    "creatinine": Lab("2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 2),
    "hemoglobin": Lab("718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 1),
    "glucose": Lab("2345-7", "Glucose [Mass/volume] in Serum or Plasma", "mg/dL", 0),
    "sodium": Lab("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 0),
    "potassium": Lab("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 1),
    "wbc": Lab("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*3/uL", 1),
    "bnp": Lab("30934-4", "Natriuretic peptide B [Mass/volume] in Serum or Plasma", "pg/mL", 0),
    "hba1c": Lab("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 1),
}
BASIC_PANEL = ("creatinine", "glucose", "sodium", "potassium", "hemoglobin")

VITALS: dict[str, Lab] = {
    "heart_rate": Lab("8867-4", "Heart rate", "/min", 0),
    "spo2": Lab("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 0),
    "systolic": Lab("8480-6", "Systolic blood pressure", "mm[Hg]", 0),
    "diastolic": Lab("8462-4", "Diastolic blood pressure", "mm[Hg]", 0),
}
BP_PANEL = Code(LOINC, "85354-9", "Blood pressure panel with all children optional")

# --- medications ----------------------------------------------------------------------------------------
MEDS: dict[str, Code] = {
    "amlodipine": Code(RXNORM, "197361", "Amlodipine 5 MG Oral Tablet"),
    "lisinopril": Code(RXNORM, "314076", "Lisinopril 10 MG Oral Tablet"),
    "metformin": Code(RXNORM, "861007", "Metformin hydrochloride 500 MG Oral Tablet"),
    "simvastatin": Code(RXNORM, "312961", "Simvastatin 20 MG Oral Tablet"),
    "furosemide": Code(RXNORM, "313988", "Furosemide 40 MG Oral Tablet"),
    "metoprolol": Code(RXNORM, "866414", "24 HR Metoprolol succinate 100 MG Extended Release Oral Tablet"),
    "fluticasone_salmeterol": Code(
        RXNORM, "896209",
        "Fluticasone propionate 0.25 MG/ACTUAT / salmeterol 0.05 MG/ACTUAT Dry Powder Inhaler"
    ),
    "albuterol": Code(RXNORM, "745679", "200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    "warfarin": Code(RXNORM, "855332", "Warfarin Sodium 5 MG Oral Tablet"),
    "acetaminophen": Code(RXNORM, "313782", "Acetaminophen 325 MG Oral Tablet"),
    "amoxicillin_clav": Code(RXNORM, "562251", "Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet"),
    "nitroglycerin": Code(RXNORM, "705129", "Nitroglycerin 0.4 MG/ACTUAT Mucosal Spray"),
}
# medications of chronic conditions, started when the condition is diagnosed and renewed at visits
CHRONIC_MEDS: dict[str, tuple[str, ...]] = {
    "htn": ("amlodipine", "lisinopril"),
    "dm": ("metformin",),
    "hld": ("simvastatin",),
    "hf": ("furosemide", "metoprolol"),
    "ckd": (),
    "copd": ("fluticasone_salmeterol", "albuterol"),
    "af": ("warfarin",),
}
# inpatient drugs ordered through a Medication resource (MedicationRequest.medicationReference)
MEDICATION_RESOURCES: dict[str, Code] = {
    "ceftriaxone": Code(RXNORM, "1665021", "Ceftriaxone 1000 MG Injection"),
    "heparin": Code(RXNORM, "1361615", "Heparin sodium, porcine 5000 UNT/ML Injectable Solution"),
    "furosemide_iv": Code(RXNORM, "1719286", "Furosemide 10 MG/ML Injectable Solution"),
}

# --- procedures -----------------------------------------------------------------------------------------
PROCEDURES: dict[str, Code] = {
    "chest_xray": Code(SNOMED, "399208008", "Plain chest X-ray"),
    "echo": Code(SNOMED, "40701008", "Echocardiography"),
    "hemodialysis": Code(SNOMED, "302497006", "Hemodialysis"),
    "pci": Code(SNOMED, "415070008", "Percutaneous coronary intervention"),
    "ecg": Code(SNOMED, "29303009", "Electrocardiographic procedure"),
    "endoscopy": Code(SNOMED, "386831001", "Endoscopy of upper gastrointestinal tract"),
    "ecg_office": Code(CPT, "93000", "Electrocardiogram, routine ECG with at least 12 leads; with "
                       "interpretation and report"),
    "spirometry": Code(CPT, "94010", "Spirometry, including graphic record, total and timed vital capacity"),
}

# --- encounter classes ----------------------------------------------------------------------------------
ENCOUNTER_CLASSES: dict[str, Code] = {
    "AMB": Code(ACT_CODE, "AMB", "ambulatory"),
    "EMER": Code(ACT_CODE, "EMER", "emergency"),
    "IMP": Code(ACT_CODE, "IMP", "inpatient encounter"),
}

RACES: tuple[tuple[str, str, float], ...] = (
    # (OMB code, text, share)
    ("2106-3", "White", 0.62),
    ("2054-5", "Black or African American", 0.14),
    ("2028-9", "Asian", 0.07),
    ("1002-5", "American Indian or Alaska Native", 0.02),
    ("2131-1", "Other Race", 0.15),
)
