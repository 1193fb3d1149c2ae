"""The generated population: valid FHIR R4, realistic ranges, and a truth table the data realises."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from ehrfm.synth import SynthSummary, oracle_auroc, read_truth
from ehrfm.synth.record import MORTALITY_TASK, READMISSION_TASK

DAY_US = 86_400 * 1_000_000


def _read(folder: Path, rt: str) -> list[dict[str, Any]]:
    with open(folder / f"{rt}.ndjson") as f:
        return [json.loads(line) for line in f]


def _us(ts: str) -> int:
    """FHIR dateTime (UTC, 'Z') -> epoch microseconds."""
    dt = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return int(dt.timestamp()) * 1_000_000


@pytest.fixture(scope="module")
def resources(population: tuple[Path, SynthSummary]) -> dict[str, list[dict[str, Any]]]:
    folder, _ = population
    return {rt: _read(folder, rt) for rt in ("Patient", "Encounter", "Condition", "MedicationRequest",
                                            "Procedure", "Medication")}


def test_sample_is_valid_fhir_r4(population: tuple[Path, SynthSummary]) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    folder, _ = population
    n_checked: dict[str, int] = defaultdict(int)
    types = ("Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "Procedure",
             "Medication")
    for rt in types:
        with open(folder / f"{rt}.ndjson") as f:
            for i, line in enumerate(f):
                if i >= 150:
                    break
                obj = json.loads(line)
                get_fhir_model_class(rt).model_validate(obj)  # raises on invalid R4
                n_checked[rt] += 1
    # the blood-pressure panel (an Observation with components) validates too
    with open(folder / "Observation.ndjson") as f:
        obs = [json.loads(next(f)) for _ in range(3000)]
    bp = next(o for o in obs if "component" in o)
    get_fhir_model_class("Observation").model_validate(bp)
    assert {c["code"]["coding"][0]["code"] for c in bp["component"]} == {"8480-6", "8462-4"}
    assert all(n > 0 for n in n_checked.values()), n_checked


def test_references_resolve(resources: dict[str, list[dict[str, Any]]]) -> None:
    patients = {p["id"] for p in resources["Patient"]}
    encounters = {e["id"] for e in resources["Encounter"]}
    meds = {m["id"] for m in resources["Medication"]}
    assert all(p.isdigit() for p in patients)
    for rt in ("Encounter", "Condition", "MedicationRequest", "Procedure"):
        for r in resources[rt]:
            assert r["subject"]["reference"].removeprefix("Patient/") in patients
            if rt != "Encounter":
                assert r["encounter"]["reference"].removeprefix("Encounter/") in encounters
    by_ref = [r for r in resources["MedicationRequest"] if "medicationReference" in r]
    assert by_ref, "some MedicationRequests must reference a Medication"
    assert all(r["medicationReference"]["reference"].removeprefix("Medication/") in meds for r in by_ref)


def test_realistic_ranges(population: tuple[Path, SynthSummary],
                          resources: dict[str, list[dict[str, Any]]]) -> None:
    _, summary = population
    end_us = _us("2025-01-01T00:00:00Z")
    ages = []
    for p in resources["Patient"]:
        birth = _us(p["birthDate"] + "T00:00:00Z")
        last = _us(p["deceasedDateTime"]) if "deceasedDateTime" in p else end_us
        assert last <= end_us
        ages.append((last - birth) / (365.25 * DAY_US))
    ages_a = np.array(ages)
    assert ages_a.min() >= 17.9 and ages_a.max() <= 95.1
    assert np.percentile(ages_a, 90) - np.percentile(ages_a, 10) > 30  # born over decades
    enc = pd.DataFrame([(e["class"]["code"], _us(e["period"]["start"]), _us(e["period"]["end"]))
                        for e in resources["Encounter"]], columns=["cls", "start", "end"])
    assert set(enc["cls"]) == {"AMB", "EMER", "IMP"}
    los = (enc[enc.cls == "IMP"].end - enc[enc.cls == "IMP"].start) / DAY_US
    assert 2.0 < los.median() < 8.0 and los.max() > 20.0 and (los < 1.0).any()
    amb = (enc[enc.cls == "AMB"].end - enc[enc.cls == "AMB"].start) / 3.6e9
    assert amb.max() <= 1.0
    codes = {c["code"]["coding"][0]["code"] for c in resources["Condition"]}
    assert {"E11.9", "I50.9", "J44.9", "N18.3", "I10"} <= codes
    assert summary.deaths > summary.in_hospital_deaths > 0  # deaths in and out of hospital
    tasks = summary.tasks
    assert 0.08 <= tasks[READMISSION_TASK]["prevalence"] <= 0.22
    assert 0.03 <= tasks[MORTALITY_TASK]["prevalence"] <= 0.12


def test_truth_table_schema(population: tuple[Path, SynthSummary]) -> None:
    folder, _ = population
    import pyarrow.parquet as pq

    from ehrfm.synth import TRUTH_FILE, TRUTH_SCHEMA

    table = pq.read_table(folder / TRUTH_FILE)
    assert table.schema.equals(TRUTH_SCHEMA)
    df = table.to_pandas()
    assert (df["subject_id"] == df["patient_id"].astype("int64")).all()
    assert df["true_prob"].between(0, 1).all() and set(df["outcome"].unique()) <= {0, 1}


def test_truth_is_realised_in_the_data(population: tuple[Path, SynthSummary],
                                       resources: dict[str, list[dict[str, Any]]]) -> None:
    folder, _ = population
    truth = read_truth(folder)
    enc = {e["id"]: e for e in resources["Encounter"]}
    imp_starts: dict[str, list[int]] = defaultdict(list)
    for e in resources["Encounter"]:
        if e["class"]["code"] == "IMP":
            imp_starts[e["subject"]["reference"].removeprefix("Patient/")].append(_us(e["period"]["start"]))
    deceased = {p["id"]: _us(p["deceasedDateTime"]) for p in resources["Patient"] if "deceasedDateTime" in p}
    pt = truth["prediction_time"].to_numpy().astype("datetime64[us]").astype("int64")
    n_checked = {READMISSION_TASK: [0, 0], MORTALITY_TASK: [0, 0]}
    for row, t in zip(truth.itertuples(), pt, strict=True):
        e = enc[row.encounter_id]
        assert e["class"]["code"] == "IMP"
        assert e["subject"]["reference"] == f"Patient/{row.patient_id}"
        start, end = _us(e["period"]["start"]), _us(e["period"]["end"])
        task, outcome, pid = str(row.task), int(str(row.outcome)), str(row.patient_id)
        n_checked[task][outcome] += 1
        if task == READMISSION_TASK:
            assert t == end
            readmitted = any(end < s <= end + 30 * DAY_US for s in imp_starts[pid])
            assert readmitted == bool(row.outcome), row
            # a margin past day 30 so any reading of the window's edge gives the same label
            if not row.outcome:
                assert not any(end < s <= end + 32 * DAY_US for s in imp_starts[pid])
        else:
            assert t == start + DAY_US and end > t
            died = deceased.get(row.patient_id) == end
            assert died == bool(row.outcome), row
            assert (e["hospitalization"]["dischargeDisposition"]["coding"][0]["code"] == "exp") == died
    assert all(neg > 0 and pos > 0 for neg, pos in n_checked.values()), n_checked


def test_deaths_are_unambiguous(resources: dict[str, list[dict[str, Any]]]) -> None:
    """A death is either the end of a stay (disposition 'exp') or > 2 days after every encounter: label
    engines that read a death within 24 h of a discharge as in-hospital give the planted labels."""
    deceased = {p["id"]: _us(p["deceasedDateTime"]) for p in resources["Patient"] if "deceasedDateTime" in p}
    for e in resources["Encounter"]:
        pid = e["subject"]["reference"].removeprefix("Patient/")
        if pid not in deceased:
            continue
        end = _us(e["period"]["end"])
        died_here = e["class"]["code"] == "IMP" and e["hospitalization"]["dischargeDisposition"]["coding"][0][
            "code"] == "exp"
        if died_here:
            assert deceased[pid] == end
        else:
            assert deceased[pid] > end + 2 * DAY_US - 1_000_000, e["id"]


def test_planted_signal_is_real(population: tuple[Path, SynthSummary]) -> None:
    folder, _ = population
    truth = read_truth(folder)
    for task, floor in ((READMISSION_TASK, 0.7), (MORTALITY_TASK, 0.65)):
        sub = truth[truth.task == task]
        assert oracle_auroc(truth, task) > floor, task
        # outcomes are Bernoulli draws of true_prob: observed rate within 4 standard errors of the mean
        p = sub["true_prob"].to_numpy()
        se = np.sqrt((p * (1 - p)).sum()) / len(p)
        assert abs(sub["outcome"].mean() - p.mean()) < 4 * se, task
