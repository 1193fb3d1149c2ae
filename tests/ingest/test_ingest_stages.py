"""The ``ehrfm ingest`` stage runners, ``run(cfg, layout) -> IngestSummary``, on small inputs (Spark): the
FHIR stage reads the layout's synthetic population by default, the MIMIC stage accounts for every table row.
(The MEDS stage is run in test_meds_input.py, the FHIR stage through the CLI in test_fhir_corrupt.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ehrfm.config.ingest import FhirIngestConfig, MimicIngestConfig
from ehrfm.config.synth import SynthConfig
from ehrfm.ingest.validate import validate_meds_dataset
from ehrfm.layout import Layout

pytestmark = pytest.mark.spark

PATIENTS = """subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod
1,F,40,2150,2011 - 2013,2151-06-01
2,,30,2150,2011 - 2013,
"""
ADMISSIONS = (
    "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admit_provider_id,admission_location,"
    "discharge_location,insurance,language,marital_status,race,edregtime,edouttime,hospital_expire_flag\n"
    "1,100,2150-03-01 10:00:00,2150-03-05 12:00:00,,URGENT,P1,ER,HOME,Medicare,ENGLISH,MARRIED,WHITE,"
    "2150-03-01 08:00:00,2150-03-01 10:30:00,0\n"
)
LABEVENTS = (
    "labevent_id,subject_id,hadm_id,specimen_id,itemid,order_provider_id,charttime,storetime,value,valuenum,"
    "valueuom,ref_range_lower,ref_range_upper,flag,priority,comments\n"
    "10,1,100,5,50912,,2150-03-02 06:00:00,,1.1,1.1,mg/dL,,,,,\n"
    "11,1,100,5,50912,,2150-13-45 25:00:00,,1.2,1.2,mg/dL,,,,,\n"
    "12,7,100,5,50912,,2150-03-02 06:00:00,,1.3,1.3,mg/dL,,,,,\n"
)


def test_fhir_stage_reads_the_synthetic_population_by_default(spark: Any, tmp_path: Path) -> None:
    from ehrfm.ingest.fhir.stage import run
    from ehrfm.synth.generate import population_files
    from ehrfm.synth.stage import run as synth

    layout = Layout(root=str(tmp_path))
    synth(SynthConfig(n_patients=20, seed=3, patients_per_file=8, progress=False), layout)
    summary = run(FhirIngestConfig(max_time="2030-01-01", split_seed=1), layout)
    meds = layout.meds_paths
    assert summary.source == "fhir" and summary.output == str(meds.root) and summary.dataset_name == "fhir"
    assert summary.subjects == 20 and summary.rejects == 0 and summary.reconciled
    assert summary.by_type["Patient"]["in"] == summary.by_type["Patient"]["mapped"] == 20
    assert summary.by_type["Medication"]["skipped"] == summary.by_type["Medication"]["in"] > 0
    assert summary.totals["events"] == summary.events
    saved = json.loads(meds.summary.read_text())
    assert saved["events"] == summary.events and saved["split_seed"] == 1
    assert saved["totals"] == summary.totals
    assert saved["files"] == len(population_files(layout.synthetic_dir))  # truth/ is not read as input
    assert validate_meds_dataset(str(meds.root)).events == summary.events


def test_mimic_stage_accounts_for_every_row(spark: Any, tmp_path: Path) -> None:
    from ehrfm.ingest.mimic.stage import run

    root = tmp_path / "mimic"
    for sub, name, text in [("hosp", "patients", PATIENTS), ("hosp", "admissions", ADMISSIONS),
                            ("hosp", "labevents", LABEVENTS)]:
        (root / sub).mkdir(parents=True, exist_ok=True)
        (root / sub / f"{name}.csv").write_text(text)
    layout = Layout(meds=str(tmp_path / "mimic_meds"))
    cfg = MimicIngestConfig(input=str(root), dataset_name="tiny", split_ratios=(0.5, 0.5, 0.0))
    summary = run(cfg, layout)
    assert summary.source == "mimic" and summary.dataset_name == "tiny" and summary.reconciled
    labs = [row for name, row in summary.by_type.items() if name.startswith("labevents:")]
    assert labs == [{"in": 3, "mapped": 1, "events": 1, "rejected": 2, "skipped": 0, "duplicate": 0}]
    assert summary.rejects == summary.totals["rejected"] >= 2 and summary.subjects == 2
    assert summary.splits["held_out"] == 0
    assert json.loads(layout.meds_paths.summary.read_text())["events"] == summary.events
    assert validate_meds_dataset(str(layout.meds_paths.root)).subjects == 2
