"""All 615 Synthea bundles through the Spark path, checked against counts taken independently from the
raw JSON here (not from the mapper): subjects, encounters per class, deaths, numeric lab results."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from helpers.meds_valid import assert_meds_valid

from ehrfm.ingest.fhir.spark_ingest import ingest_fhir

MAX_TIME = 1_893_456_000_000_000  # 2030-01-01
V3_CLASS = {"AMB": "AMBULATORY", "EMER": "EMERGENCY", "IMP": "INPATIENT"}


def _when(s: str) -> dt.datetime:
    d = dt.datetime.fromisoformat(s)
    return d.astimezone(dt.timezone.utc).replace(tzinfo=None) if d.tzinfo else d


def raw_counts(folder: Path) -> dict[str, Any]:
    """Counts straight from the JSON. An item dated earlier than the day before its patient's birth date
    is an impossible time and must come back as a reject, not an event (Synthea has a few)."""
    c: dict[str, Any] = {"patients": 0, "deaths": 0, "classes": Counter(), "early_classes": Counter(),
                         "labs": Counter(), "early_labs": 0, "entries": 0}
    copies: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in sorted(folder.glob("*.json.gz")):
        entries = json.loads(gzip.decompress(path.read_bytes()))["entry"]
        c["entries"] += len(entries)
        for e in entries:
            r = e["resource"]
            assert "lastUpdated" not in (r.get("meta") or {})  # so the last copy in path order wins
            body = {k: v for k, v in r.items() if k != "meta"}
            copies.setdefault((r["resourceType"], r["id"]), []).append(body)
        births = [_when(e["resource"]["birthDate"]) for e in entries
                  if e["resource"]["resourceType"] == "Patient"]
        floor = births[0] - dt.timedelta(days=1) if births else dt.datetime.min
        for e in entries:
            r = e["resource"]
            rt = r["resourceType"]
            if rt == "Patient":
                c["patients"] += 1
                c["deaths"] += "deceasedDateTime" in r
            elif rt == "Encounter":
                klass = V3_CLASS[r["class"]["code"]]
                c["classes"][klass] += 1
                c["early_classes"][klass] += _when(r["period"]["start"]) < floor
            elif rt == "Observation" and "valueQuantity" in r and any(
                    cd.get("code") == "laboratory" for cat in r.get("category", [])
                    for cd in cat.get("coding", [])):
                if _when(r["effectiveDateTime"]) < floor:
                    c["early_labs"] += 1
                else:
                    c["labs"][(f"LAB//LOINC//{r['code']['coding'][0]['code']}",
                               r["valueQuantity"]["unit"])] += 1
    # Organizations and Practitioners repeat in every patient's bundle: identical to the last copy (the
    # winner) they are duplicates, else (the hospital and practitioner files carry utilization
    # extensions) conflicting versions, rejected
    c["duplicates"] = Counter(k[0] for k, v in copies.items() for x in v[:-1] if x == v[-1])
    c["conflicts"] = Counter(k[0] for k, v in copies.items() for x in v[:-1] if x != v[-1])
    return c


@pytest.mark.spark
@pytest.mark.slow
def test_full_synthea_corpus(spark: Any, synthea_bundles: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    result = ingest_fhir(spark, [str(synthea_bundles)], str(tmp_path / "out"), max_time_us=MAX_TIME)
    seconds = time.perf_counter() - t0
    print(f"full corpus: {seconds:.0f} s on a shared 2-core machine")
    raw = raw_counts(synthea_bundles)

    assert raw["patients"] == 615 and raw["deaths"] == 124
    assert raw["classes"] == Counter({"AMBULATORY": 16537, "EMERGENCY": 940, "INPATIENT": 621})
    assert result["reconciled"] and result["totals"]["in"] == raw["entries"]
    assert result["subjects"] == 615
    assert pq.read_table(tmp_path / "out" / "metadata" / "subject_ids.parquet").num_rows == 615

    data = pq.read_table(tmp_path / "out" / "data", columns=["code", "numeric_value", "unit"])
    codes = Counter(data.column("code").to_pylist())
    assert codes["MEDS_BIRTH"] == 615 and codes["MEDS_DEATH"] == 124
    for klass, n in raw["classes"].items():
        assert codes[f"ENCOUNTER//{klass}//START"] == n - raw["early_classes"][klass], klass
    # valid MEDS by the meds package's own schemas, and every code we mint is described
    assert assert_meds_valid(tmp_path / "out")["subjects"] == 615
    described = pq.read_table(tmp_path / "out" / "metadata" / "codes.parquet").to_pandas()
    minted = described[described.code.str.match(r"^(MEDS_|ENCOUNTER//|GENDER//|RACE//|ETHNICITY//)")]
    assert len(minted) > 10 and minted.description.notna().all()
    rejects = pq.read_table(tmp_path / "out" / "rejects").to_pylist()
    early_encounters = [r for r in rejects if r["resource_type"] == "Encounter"]
    assert len(early_encounters) == sum(raw["early_classes"].values())
    # the only problems in this corpus: impossible times and conflicting versions of shared resources
    conflicts = Counter(r["resource_type"] for r in rejects if r["reason"].startswith("conflicting version"))
    assert conflicts == raw["conflicts"] and set(conflicts) == {"Organization", "Practitioner"}
    assert all("before the subject's birth" in r["reason"] for r in rejects
               if not r["reason"].startswith("conflicting version"))
    by_type = result["by_resource_type"]
    assert {k: row["duplicate"] for k, row in by_type.items() if row["duplicate"]} == raw["duplicates"]
    print(f"after death: {result['after_death']}")
    assert result["after_death"]["total"] == sum(result["after_death"]["by_source"].values()) > 0

    labs = data.filter(pc.and_(pc.starts_with(data["code"], "LAB//"), pc.is_valid(data["numeric_value"])))
    got = Counter(zip(labs.column("code").to_pylist(), labs.column("unit").to_pylist(), strict=True))
    assert got == raw["labs"]
    assert sum(got.values()) + raw["early_labs"] == 54612  # SOURCE.md: numeric laboratory results
