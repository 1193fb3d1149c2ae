"""The ingest summary (no Spark): per-input-type counts of each source in one shape, and reconciliation."""

from __future__ import annotations

from typing import Any

from ehrfm.ingest.summary import fhir_counts, format_table, make_summary, meds_counts, mimic_counts

WRITER = {"dataset_name": "d", "events": 9, "subjects": 2, "codes": 4, "rejects": 3,
          "splits": {"train": 2, "tuning": 0, "held_out": 0}}


def test_fhir_counts_and_totals() -> None:
    result: dict[str, Any] = {**WRITER, "by_resource_type": {
        "Patient": {"in": 3, "mapped": 2, "events": 4, "rejected": 0, "skipped": 0, "duplicate": 1},
        "Claim": {"in": 1, "mapped": 0, "events": 0, "rejected": 0, "skipped": 1},
        "<unreadable>": {"in": 3, "mapped": 0, "events": 0, "rejected": 3, "skipped": 0}}}
    s = make_summary("fhir", result, fhir_counts(result), "out", 1.234)
    assert s.reconciled and s.seconds == 1.2 and list(s.by_type) == ["<unreadable>", "Claim", "Patient"]
    assert s.totals == {"in": 7, "mapped": 2, "events": 4, "rejected": 3, "skipped": 1, "duplicate": 1}
    table = format_table(s)
    assert "<unreadable>" in table
    assert table.splitlines()[-1].split() == ["total", "7", "2", "4", "3", "1", "1"]
    result["by_resource_type"]["Patient"]["duplicate"] = 0  # a record counted nowhere
    assert not make_summary("fhir", result, fhir_counts(result), "out", 0.0).reconciled


def test_mimic_counts_use_the_table_rows() -> None:
    result: dict[str, Any] = {**WRITER, "tables": {"labevents": {"rows": 6}, "admissions": {"rows": 2}},
                              "rules": {
                                  "labevents:{_lab_code}": {"table": "labevents", "events": 2,
                                                            "rejects": {"time before birth": 1, "bad": 3}},
                                  "admissions:EMER": {"table": "admissions", "events": 1, "rejects": {},
                                                      "not_applicable": 1}}}
    by = mimic_counts(result)
    assert by["labevents:{_lab_code}"] == {"in": 6, "mapped": 2, "events": 2, "rejected": 4, "skipped": 0,
                                           "duplicate": 0}
    assert by["admissions:EMER"] == {"in": 2, "mapped": 1, "events": 1, "rejected": 0, "skipped": 1,
                                     "duplicate": 0}
    assert make_summary("mimic", result, by, "out", 0.0).reconciled
    result["tables"]["labevents"]["rows"] = 7  # a row that became neither an event nor a reject
    assert not make_summary("mimic", result, mimic_counts(result), "out", 0.0).reconciled


def test_mimic_rows_split_into_several_events_count_once() -> None:
    """omr's ``120/80`` is two events of one row: ``mapped``/``rejected`` count rows, ``events`` events."""
    result: dict[str, Any] = {**WRITER, "tables": {"omr": {"rows": 5}}, "rules": {
        "omr:OMR//{_name}": {"table": "omr", "events": 6, "rejects": {"time before birth": 2},
                             "rows_mapped": 4, "rows_rejected": 1}}}
    by = mimic_counts(result)
    assert by["omr:OMR//{_name}"] == {"in": 5, "mapped": 4, "events": 6, "rejected": 1, "skipped": 0,
                                      "duplicate": 0}
    assert make_summary("mimic", result, by, "out", 0.0).reconciled
    result["rules"]["omr:OMR//{_name}"]["rows_mapped"] = 6  # events counted as rows: 2 too many
    assert not make_summary("mimic", result, mimic_counts(result), "out", 0.0).reconciled


def test_meds_counts() -> None:
    result: dict[str, Any] = {**WRITER, "rows_in": 12}
    by = meds_counts(result)
    assert by == {"meds": {"in": 12, "mapped": 9, "events": 9, "rejected": 3, "skipped": 0, "duplicate": 0}}
    assert make_summary("meds", result, by, "out", 0.0).reconciled
