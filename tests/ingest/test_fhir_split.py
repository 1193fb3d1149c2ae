"""A big plain NDJSON file cut into many byte ranges gives, through Spark, exactly the one-patient
path's events, rejects (line numbers across range boundaries) and counts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from ehrfm.ingest.fhir import spark_ingest
from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.ingest.fhir.tables import sort_events
from ehrfm.schema import EVENT_COLUMNS, EVENTS_SCHEMA

MAX_TIME = 1_893_456_000_000_000  # 2030-01-01


def _ndjson() -> bytes:
    lines: list[bytes] = [json.dumps({"resourceType": "Medication", "id": "m1", "code": {"coding": [
        {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361"}]}}).encode()]
    for p in range(6):
        pid = f"p{p}"
        lines.append(
            json.dumps({"resourceType": "Patient", "id": pid, "birthDate": f"19{50 + p}-01-01"}).encode())
        for k in range(8):
            lines.append(json.dumps({
                "resourceType": "Observation", "id": f"o{p}-{k}", "status": "final",
                "subject": {"reference": f"Patient/{pid}"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                # the early ones are before birth: rejects
                "effectiveDateTime": f"{1945 + 4 * k}-06-01T10:00:00Z",
                "valueQuantity": {"value": k, "unit": "mmol/L"}}).encode())
        lines.append(b"")  # blank lines are counted, never records
        lines.append(
            json.dumps({"resourceType": "MedicationRequest", "id": f"mr{p}", "status": "active",
                        "intent": "order",
                                 "subject": {"reference": f"Patient/{pid}"}, "authoredOn": "2020-01-02",
                                 "medicationReference": {"reference": "Medication/m1" if p % 2
                                                         else "Medication/gone"}}).encode())
    lines.insert(30, b'{"resourceType": "Observation", "id": "broken"')  # a malformed line in a middle range
    return b"\n".join(lines) + b"\n"


def _reject_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["record_index"], r["resource_type"], r["resource_id"], r["field"], r["reason"])


@pytest.mark.spark
def test_ranges_give_the_one_patient_result(spark: Any, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    content = _ndjson()
    path = tmp_path / "in" / "all.ndjson"
    path.parent.mkdir()
    path.write_bytes(content)
    monkeypatch.setattr(spark_ingest, "SPLIT_BYTES", 1000)  # 15 ranges, boundaries inside and between lines
    assert len(spark_ingest.plan_units([(f"file:{path}", len(content))], 1000)) == 15
    result = spark_ingest.ingest_fhir(spark, [str(path.parent)], str(tmp_path / "out"), max_time_us=MAX_TIME,
                                      validate="full")

    one = bundle_to_events(content, source_file=str(path), max_time_us=MAX_TIME, validate="full")
    got = sort_events(pq.read_table(tmp_path / "out" / "data").select(EVENT_COLUMNS).cast(EVENTS_SCHEMA))
    assert got.num_rows == one.events.num_rows > 0
    assert got.to_pylist() == one.events.to_pylist()
    rejects = sorted(_reject_key(r) for r in pq.read_table(tmp_path / "out" / "rejects").to_pylist())
    assert rejects == sorted(_reject_key(r) for r in one.rejects.to_pylist())
    # the malformed line, by number
    assert rejects[[r[0] for r in rejects].index(30)][:4] == (30, None, None, None)
    assert any(r[2] == "mr0" and "not found" in r[4] for r in rejects)
    assert result["totals"] == one.summary.totals() and result["reconciled"]
