"""One rule, two engines, one test: the Spark path and the one-patient path give identical events
(and rejects) on ~20 real Synthea bundles."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.ingest.fhir.spark_ingest import ingest_fhir
from ehrfm.ingest.fhir.tables import sort_events
from ehrfm.ingest.minted import minted_description
from ehrfm.schema import EVENT_COLUMNS, EVENTS_SCHEMA

MAX_TIME = 1_893_456_000_000_000  # 2030-01-01, fixed so both runs use the same far-future limit
N_BUNDLES = 20


def _reject_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (Path(r["source_file"]).name, r["record_index"], r["resource_type"], r["resource_id"], r["field"],
            r["reason"])


@pytest.mark.spark
def test_spark_and_one_patient_paths_agree(spark: Any, synthea_bundles: Path, tmp_path: Path) -> None:
    # every 30th patient bundle: spread over the alphabet, includes deceased and inpatient patients
    files = sorted(p for p in synthea_bundles.glob("*.json.gz") if "_" in p.name)[::30][:N_BUNDLES]
    assert len(files) == N_BUNDLES

    one = [bundle_to_events(p.read_bytes(), source_file=str(p), max_time_us=MAX_TIME) for p in files]
    expected = sort_events(pa.concat_tables([r.events for r in one]))
    result = ingest_fhir(spark, [str(p) for p in files], str(tmp_path / "out"), max_time_us=MAX_TIME)

    got = sort_events(pq.read_table(tmp_path / "out" / "data").select(EVENT_COLUMNS).cast(EVENTS_SCHEMA))
    assert got.num_rows == expected.num_rows > 0
    assert got.to_pylist() == expected.to_pylist()

    spark_rejects = sorted(_reject_key(r) for r in pq.read_table(tmp_path / "out" / "rejects").to_pylist())
    one_rejects = sorted(_reject_key(r) for res in one for r in res.rejects.to_pylist())
    assert spark_rejects == one_rejects

    totals = {k: sum(r.summary.totals()[k] for r in one)
              for k in ("in", "mapped", "events", "rejected", "skipped", "duplicate")}
    # one bundle at a time, an Organization or Practitioner shared by several patients' bundles is skipped in
    # each; across the whole input its later copies are duplicates (counted here from the JSON)
    keys = [(e["resource"]["resourceType"], e["resource"]["id"]) for p in files
            for e in json.loads(gzip.decompress(p.read_bytes()))["entry"]]
    shared = len(keys) - len(set(keys))
    assert shared > 0
    totals["skipped"] -= shared
    totals["duplicate"] += shared
    assert result["totals"] == totals and result["reconciled"]
    assert result["subjects"] == N_BUNDLES
    codes = {r["code"]: r["description"]
             for r in pq.read_table(tmp_path / "out" / "metadata" / "codes.parquet").to_pylist()}
    assert set(codes) == set(expected.column("code").to_pylist())
    assert codes["MEDS_BIRTH"] == minted_description("MEDS_BIRTH")  # minted: described by ehrfm
    assert codes["LAB//LOINC//2339-0"] == "Glucose"  # from the source's coding.display
