"""The Spark FHIR engine gets birth floors and Medications to the records through Spark joins, never through
the driver (issue 17: nothing proportional to patients is collected or broadcast): the scan hands the driver
one row per unit, no lookup row; each unit maps with its own lookups and the records that need another
unit's (``P`` rows) get them from the cross-file join. The output stays the local engine's (which still
gathers global lookups on its driver), for NDJSON exports with Patients, Medications and the records that
reference them in different files, and for Patients in a Bundle with their records in NDJSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from ehrfm.ingest.fhir import spark_ingest
from ehrfm.ingest.fhir.paths import expand_inputs
from ehrfm.ingest.fhir.spark_rows import ROW_SCHEMA
from ehrfm.ingest.fhir.spark_units import NDJSON, map_unit_joined
from ehrfm.synth import SynthConfig, generate
from tests.ingest.test_fhir_local import MAX_TIME, _both

_COLS = [c.strip().split(" ")[0] for c in ROW_SCHEMA.split(",")]


def _rows(unit: dict[str, Any]) -> list[dict[str, Any]]:
    return [dict(zip(_COLS, r, strict=False)) for r in map_unit_joined(unit, "none", MAX_TIME, 50)]


def _unit(path: Path) -> dict[str, Any]:
    return {"path": str(path), "start": 0, "end": path.stat().st_size, "mode": "file", "fmt": NDJSON,
            "base": 0, "problem": None, "good_len": None}


def _of_type(folder: Path, rtype: str) -> list[dict[str, Any]]:
    """The resources of type ``rtype`` in the NDJSON files of ``folder``, in file and line order."""
    found = [json.loads(line) for p in sorted(folder.glob("*.ndjson"))
             for line in p.read_text().splitlines() if line.strip()]
    return [r for r in found if r["resourceType"] == rtype]


def _with_early_records(export: Path, top: Path) -> None:
    """``export`` plus a file of records the birth floor and Medication lookups decide, none of them in the
    file of the Patient or Medication they need: an Observation before its subject's birth (rejected only
    with the other file's floor), a MedicationRequest by reference to an exported Medication, and one
    referencing a Medication that exists nowhere."""
    obs = _of_type(export, "Observation")[0]
    mr = _of_type(export, "MedicationRequest")[0]
    med = _of_type(export, "Medication")[0]
    early = {**obs, "id": "early-1", "effectiveDateTime": "1801-01-01T00:00:00Z"}
    by_ref = {k: v for k, v in mr.items() if k != "medicationCodeableConcept"}
    by_ref.update(id="by-ref-1", medicationReference={"reference": f"Medication/{med['id']}"})
    lost = {**by_ref, "id": "by-ref-2", "medicationReference": {"reference": "Medication/nowhere"}}
    (top / "late").mkdir(parents=True, exist_ok=True)
    (top / "late" / "extra.ndjson").write_text("\n".join(json.dumps(r) for r in (early, by_ref, lost)) + "\n")


def test_unit_maps_with_its_own_lookups_and_defers_the_rest(tmp_path: Path) -> None:
    generate(SynthConfig(n_patients=3, seed=5, patients_per_file=10), tmp_path / "export")
    export = tmp_path / "export"
    patients = _of_type(export, "Patient")
    mine, other = patients[0], patients[1]
    obs = _of_type(export, "Observation")
    own_obs = next(o for o in obs if o["subject"]["reference"] == f"Patient/{mine['id']}")
    other_obs = next(o for o in obs if o["subject"]["reference"] == f"Patient/{other['id']}")
    med = _of_type(export, "Medication")[0]
    mr = {k: v for k, v in next(m for m in _of_type(export, "MedicationRequest")
                                if m["subject"]["reference"] == f"Patient/{mine['id']}").items()
          if k != "medicationCodeableConcept"}
    mr["medicationReference"] = {"reference": f"Medication/{med['id']}"}
    lines = [json.dumps(r) for r in (own_obs, mine, other_obs, med, mr)]
    path = tmp_path / "mixed.ndjson"
    path.write_text("\n".join(lines) + "\n")

    rows = _rows(_unit(path))
    kinds = {(r["kind"], r["record_index"]) for r in rows if r["kind"] in ("K", "P")}
    # its own Patient's floor makes the first Observation (before the Patient in the file) final here
    assert ("K", 0) in kinds and ("K", 1) in kinds
    # another file's Patient, and a Medication (the global first copy may be another unit's): the join decides
    assert ("P", 2) in kinds and ("P", 4) in kinds and ("K", 2) not in kinds and ("K", 4) not in kinds
    births = [r for r in rows if r["kind"] == "B"]
    assert len(births) == 1 and births[0]["floor"] is not None
    (m,) = [r for r in rows if r["kind"] == "M"]
    offset = len(lines[0]) + len(lines[1]) + len(lines[2]) + 3
    assert (m["med_key"], m["source_file"], m["record_index"]) == (f"Medication/{med['id']}", str(path),
                                                                    offset)
    assert json.loads(m["payload"]) == med


@pytest.mark.spark
@pytest.mark.parametrize("patients_in_bundle", [False, True])
def test_no_lookup_reaches_the_driver_and_output_is_the_local_engines(
        spark: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patients_in_bundle: bool) -> None:
    top = tmp_path / "in"
    generate(SynthConfig(n_patients=30, seed=7, patients_per_file=12), top / "export")
    _with_early_records(top / "export", top)
    if patients_in_bundle:  # the Patients only in a Bundle document, every record referencing them in NDJSON
        patients = _of_type(top / "export", "Patient")
        for p in (top / "export").glob("Patient*.ndjson"):
            p.unlink()
        (top / "bundle.json").write_text(json.dumps(
            {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": p} for p in patients]}))

    scans: list[pa.Table] = []
    real_apply = spark_ingest.apply_scan

    def apply_scan(scan: pa.Table, units: list[dict[str, Any]]) -> Any:
        scans.append(scan)
        return real_apply(scan, units)

    broadcasts: list[Any] = []
    sc = spark.sparkContext
    real_broadcast = sc.broadcast

    def broadcast(value: Any) -> Any:
        broadcasts.append(value)
        return real_broadcast(value)

    joined: list[int] = []
    real_pending = spark_ingest._pending

    def pending(p1: Any) -> Any:
        joined.append(1)
        return real_pending(p1)

    monkeypatch.setattr(spark_ingest, "apply_scan", apply_scan)
    monkeypatch.setattr(sc, "broadcast", broadcast)
    monkeypatch.setattr(spark_ingest, "_pending", pending)
    monkeypatch.setattr(spark_ingest, "SPLIT_BYTES", 100_000)  # byte ranges too: line numbers across them
    a, b = _both(spark, [str(top)], tmp_path)

    # the Spark engine's scan (first), then the local engine's, which gathers the lookups on its driver
    scan, local_scan = scans
    units = spark_ingest.plan_units(expand_inputs(spark, [str(top)]).files, 100_000)
    assert set(scan.column("kind").to_pylist()) == {"U"} and scan.num_rows == len(units) > a["files"]
    # (a Bundle's Patients are no scan rows in either engine: the map step reads documents)
    assert set(local_scan.column("kind").to_pylist()) == {"U", "M"} | (set() if patients_in_bundle else {"B"})
    assert broadcasts == [] and joined == [1]
    assert a["events"] == b["events"] > 1000 and a["reconciled"]
    rejects = (spark.read.parquet(str(tmp_path / "spark" / "rejects"))
               .select("resource_id", "reason").collect())
    reasons = {r["resource_id"]: r["reason"] for r in rejects}
    assert "before the subject's birth" in reasons["early-1"]
    assert "by-ref-1" not in reasons and "not found" in reasons["by-ref-2"]
