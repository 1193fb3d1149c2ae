"""A corpus corrupted the ways real exports are, built from real Synthea bundles, through the Spark path: a
folder link cycle, a file reachable by two names, a bundle copied twice, conflicting versions of a resource
across files, a non-numeric value and a Patient without id. It reconciles exactly (in = mapped + rejected +
skipped + duplicate), every bad record is a reject with its reason, and the good subjects' events are what
the one-patient path gives for the intended data."""

from __future__ import annotations

import copy
import gzip
import json
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ehrfm.ingest.fhir.bundle import bundle_to_events
from ehrfm.ingest.fhir.dedup import NO_PATIENT, ORPHAN_PREFIX
from ehrfm.ingest.fhir.ids import subject_id_for
from ehrfm.ingest.fhir.rules import load_rules
from ehrfm.ingest.fhir.spark_ingest import ingest_fhir
from ehrfm.ingest.fhir.tables import sort_events
from ehrfm.schema import EVENT_COLUMNS, EVENTS_SCHEMA

MAX_TIME = 1_893_456_000_000_000  # 2030-01-01


def _load(path: Path) -> dict[str, Any]:
    return json.loads(gzip.decompress(path.read_bytes()))


def _write(path: Path, bundle: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(json.dumps(bundle).encode()))


def _numeric_obs(bundle: dict[str, Any]) -> list[int]:
    return [i for i, e in enumerate(bundle["entry"]) if e["resource"]["resourceType"] == "Observation"
            and isinstance((e["resource"].get("valueQuantity") or {}).get("value"), (int, float))]


def _as_ndjson(res: dict[str, Any]) -> dict[str, Any]:
    """A Bundle entry's resource as a server would export it: references as Type/id."""
    out = copy.deepcopy(res)
    for key, rtype in (("subject", "Patient"), ("encounter", "Encounter")):
        if key in out:
            out[key] = {"reference": f"{rtype}/{out[key]['reference'].removeprefix('urn:uuid:')}"}
    return out


def _shared_duplicates(bundles: list[dict[str, Any]]) -> int:
    """Identical copies of one resource across different bundles (Synthea repeats Organizations and
    Practitioners in every patient's bundle), counted here straight from the JSON."""
    copies: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for b in bundles:
        for e in b["entry"]:
            r = e["resource"]
            if "id" in r:
                copies[(r["resourceType"], r["id"])].append({k: v for k, v in r.items() if k != "meta"})
    assert all(all(c == v[0] for c in v) for v in copies.values())  # no conflicts among these three
    return sum(len(v) - 1 for v in copies.values())


@dataclass
class Corpus:
    """The corrupted corpus under ``top`` and what went into it (the test below checks the result against
    these; tests/ingest/test_fhir_local.py runs it through both engines)."""

    top: Path
    a: dict[str, Any]
    b: dict[str, Any]
    c: dict[str, Any]
    b_bad: dict[str, Any]
    c_bad: dict[str, Any]
    bad_i: int
    upd1_i: int
    upd2_i: int
    p_i: int
    upd1: dict[str, Any]
    upd2: dict[str, Any]


def build_corpus(synthea_bundles: Path, top: Path) -> Corpus:
    """Three small real bundles corrupted the ways real exports are, under ``top`` (see the comments)."""
    small = sorted((p for p in synthea_bundles.glob("*_*.json.gz")), key=lambda p: (p.stat().st_size, p.name))
    a_path, b_path, c_path = small[:3]
    a, b, c = _load(a_path), _load(b_path), _load(c_path)

    # a: bundle A, and a link from deep inside back to the top (followed, it would read everything again)
    (top / "a" / "deep").mkdir(parents=True)
    (top / "a" / "A.json.gz").write_bytes(a_path.read_bytes())
    os.symlink(top, top / "a" / "deep" / "loop")
    # b: A copied (a later path: the copy's records win, A's are duplicates), B with one non-numeric value,
    # and a second name for B
    (top / "b").mkdir()
    (top / "b" / "A_copy.json.gz").write_bytes(a_path.read_bytes())
    bad_i, upd1_i, upd2_i = _numeric_obs(b)[:3]
    b_bad = copy.deepcopy(b)
    b_bad["entry"][bad_i]["resource"]["valueQuantity"]["value"] = "abc"
    _write(top / "b" / "B.json.gz", b_bad)
    os.symlink(top / "b" / "B.json.gz", top / "b" / "B_link.json.gz")
    # c: C whose Patient has no id (nor a fullUrl to take it from), and newer versions of two of B's
    # Observations: one with meta.lastUpdated, one without (it wins by path order)
    c_bad = copy.deepcopy(c)
    (p_i,) = [i for i, e in enumerate(c["entry"]) if e["resource"]["resourceType"] == "Patient"]
    del c_bad["entry"][p_i]["resource"]["id"], c_bad["entry"][p_i]["fullUrl"]
    _write(top / "c" / "C.json.gz", c_bad)
    upd1 = _as_ndjson(b["entry"][upd1_i]["resource"])
    upd1["valueQuantity"]["value"] += 1
    upd1["meta"] = {"lastUpdated": "2024-01-01T00:00:00Z"}
    upd2 = _as_ndjson(b["entry"][upd2_i]["resource"])
    upd2["valueQuantity"]["value"] += 2
    (top / "c" / "updates.ndjson").write_text(json.dumps(upd1) + "\n" + json.dumps(upd2) + "\n")
    return Corpus(top, a, b, c, b_bad, c_bad, bad_i, upd1_i, upd2_i, p_i, upd1, upd2)


@pytest.mark.spark
def test_corrupted_real_corpus_reconciles(spark: Any, synthea_bundles: Path, tmp_path: Path) -> None:
    top = tmp_path / "in"
    k = build_corpus(synthea_bundles, top)
    a, b, c, b_bad, c_bad, upd1, upd2 = k.a, k.b, k.c, k.b_bad, k.c_bad, k.upd1, k.upd2
    bad_i, upd1_i, upd2_i, p_i = k.bad_i, k.upd1_i, k.upd2_i, k.p_i

    out = tmp_path / "out"
    result = ingest_fhir(spark, [str(top)], str(out), max_time_us=MAX_TIME)

    # inputs: each real file once; the cycle and the second name are reported, not read
    assert result["files"] == 5
    skipped = {Path(s["path"]).name: s["reason"] for s in result["skipped_links"]}
    assert skipped["loop"].startswith("link cycle") and skipped["B_link.json.gz"].startswith("same file")

    # the one-patient path on what each bundle was meant to be gives the rejects of C and the events
    c_one = bundle_to_events(c_bad, max_time_us=MAX_TIME)
    b_meant = copy.deepcopy(b_bad)
    b_meant["entry"][upd1_i]["resource"] = upd1
    b_meant["entry"][upd2_i]["resource"] = upd2
    expected_events = [bundle_to_events(x, max_time_us=MAX_TIME).events for x in (a, b_meant)]

    n = {k: len(x["entry"]) for k, x in (("a", a), ("b", b), ("c", c))}
    totals = result["totals"]
    assert result["reconciled"]
    assert totals["in"] == 2 * n["a"] + n["b"] + n["c"] + 2
    assert totals["duplicate"] == n["a"] + _shared_duplicates([a, b, c])
    assert totals["in"] == totals["mapped"] + totals["rejected"] + totals["skipped"] + totals["duplicate"]

    rejects = pq.read_table(out / "rejects").to_pylist()
    assert len(rejects) == totals["rejected"] == result["rejects"]
    assert all(r["reason"] and r["source_file"] and r["record_index"] is not None for r in rejects)
    by_loc = {(Path(r["source_file"]).name, r["record_index"]): r for r in rejects}
    b_rejects = {i: (r["field"], r["reason"]) for (f, i), r in by_loc.items() if f == "B.json.gz"}
    assert set(b_rejects) == {bad_i, upd1_i, upd2_i}
    assert b_rejects[bad_i][0] == "valueQuantity.value"
    assert b_rejects[bad_i][1].startswith("value is not a number")  # then what the FHIR validator adds
    assert b_rejects[upd1_i][0] == "meta.lastUpdated" and "updates.ndjson#0" in b_rejects[upd1_i][1]
    assert b_rejects[upd2_i][0] == "id" and "updates.ndjson#1 (later in path order" in b_rejects[upd2_i][1]
    c_rejects = {i: (r["field"], r["reason"]) for (f, i), r in by_loc.items() if f == "C.json.gz"}
    assert c_rejects == {r["record_index"]: (r["field"], r["reason"]) for r in c_one.rejects.to_pylist()}
    assert c_rejects[p_i] == ("id", "missing Patient id")
    mapped_types = set(load_rules().resources) - {"Patient"}
    orphans = [i for i, e in enumerate(c["entry"]) if e["resource"]["resourceType"] in mapped_types]
    assert len(orphans) > 10 and all(c_rejects[i][1] == ORPHAN_PREFIX + NO_PATIENT for i in orphans)
    assert set(c_rejects) == {p_i, *orphans}
    assert {f for f, _ in by_loc} == {"B.json.gz", "C.json.gz"}

    data = pq.read_table(out / "data").select(EVENT_COLUMNS).cast(EVENTS_SCHEMA)
    assert sort_events(data).to_pylist() == sort_events(pa.concat_tables(expected_events)).to_pylist()
    c_sid = subject_id_for(c["entry"][p_i]["resource"]["id"])
    assert pc.sum(pc.equal(data["subject_id"], c_sid)).as_py() in (0, None)
    assert not (out / "_fhir_tmp").exists()
