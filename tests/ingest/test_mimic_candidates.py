"""The one-pass-per-table MIMIC mapping: the rules of a table inlined in one scan give exactly the rows of
one projection per rule, and a raw table is cached only when a second reader loads it."""

from __future__ import annotations

from functools import reduce
from pathlib import Path
from typing import Any

import pytest

from ehrfm.ingest.mimic.rules import load_rules

pytestmark = pytest.mark.spark

# blanks in `when` columns (edregtime, deathtime, marital_status) and in UNK code parts (admission_location,
# discharge_location), a bad subject id, an unparseable time
ADMISSIONS = "\n".join([
    "subject_id,hadm_id,admittime,dischtime,deathtime,admission_type,admission_location,discharge_location,"
    "insurance,language,marital_status,race,edregtime,edouttime",
    "1,100,2150-03-01 10:00:00,2150-03-05 12:00:00,,URGENT,ER,HOME,Medicare,ENGLISH,MARRIED,WHITE,"
    "2150-03-01 08:00:00,2150-03-01 10:30:00",
    "x,101,2150-04-01 10:00:00,2150-04-02 12:00:00,,URGENT,,HOME,Medicare,ENGLISH,,WHITE,,",
    "3,300,2151-13-30 10:00:00,2152-01-01 09:00:00,2152-01-01 09:00:00,URGENT,,,Medicaid,,,BLACK,,",
]) + "\n"
PATIENTS = """subject_id,gender,anchor_age,anchor_year,anchor_year_group,dod
1,F,40,2150,2011 - 2013,
"""


def _rows(df: Any) -> list[tuple[Any, ...]]:
    return sorted((tuple(r) for r in df.collect()), key=repr)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mimic_candidates")
    (path / "hosp").mkdir()
    (path / "hosp" / "admissions.csv").write_text(ADMISSIONS)
    (path / "hosp" / "patients.csv").write_text(PATIENTS)
    return path


def test_one_scan_equals_one_projection_per_rule(spark: Any, root: Path) -> None:
    from ehrfm.ingest.mimic.ingest import _Tables, rule_candidates, table_candidates

    rules = load_rules()
    table_rules = [r for r in rules.events if r.table == "admissions"]
    assert len(table_rules) > 1 and any(r.when for r in table_rules)
    raw = _Tables(spark, str(root), rules).load("admissions")
    assert raw is not None
    spec = rules.tables["admissions"]
    one_scan = table_candidates(raw, table_rules, spec)
    per_rule = reduce(lambda a, b: a.unionByName(b), [rule_candidates(raw, r, spec) for r in table_rules])
    assert one_scan.columns == per_rule.columns
    got, want = _rows(one_scan), _rows(per_rule)
    assert got == want
    # the fixture exercises every branch: rows dropped by `when`, rejects with reasons, good events
    reasons = {r[one_scan.columns.index("_reason")] for r in got}
    assert None in reasons and len(reasons) >= 3
    assert len(got) < 3 * len(table_rules)


def test_raw_table_cached_only_when_read_twice(spark: Any, root: Path) -> None:
    from ehrfm.ingest.mimic.ingest import _Tables

    tables = _Tables(spark, str(root), load_rules())
    once = tables.load("patients")
    assert once is not None and not once.is_cached
    twice = tables.load("admissions")
    assert twice is not None and not twice.is_cached
    assert tables.load("admissions") is twice and twice.is_cached
    tables.release()
    assert not twice.is_cached
