"""The task spec language: shipped tasks load, and bad specs fail naming the task and the field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from ehrfm.labels import TaskSpecError, available_tasks, load_task, load_tasks, parse_spec, warn_missing_codes
from ehrfm.resources import tasks_dir

T = r"task 'readmission_30d': "  # the prefix of every error about the shipped readmission spec
SHIPPED = {"readmission_30d", "mortality_inhospital", "mortality_30d_post_discharge", "los_gt_7d",
           "death_1y_tte", "next_visit_codes"}


def _raw(name: str = "readmission_30d") -> dict[str, Any]:
    return dict(yaml.safe_load((tasks_dir() / f"{name}.yaml").read_text()))


def test_shipped_tasks_load() -> None:
    assert set(available_tasks()) >= SHIPPED
    kinds = {s.name: s.kind for s in load_tasks("all")}
    assert kinds["death_1y_tte"] == "time_to_event" and kinds["next_visit_codes"] == "forecast"
    assert [s.name for s in load_tasks("los_gt_7d, readmission_30d")] == ["los_gt_7d", "readmission_30d"]


def test_unknown_task_names_the_task_and_lists_known() -> None:
    with pytest.raises(KeyError, match="unknown task 'readmision_30d'.*readmission_30d"):
        load_task("readmision_30d")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda r: r.update(kind="regression"), r"task 'readmission_30d': kind"),
        (lambda r: r.update(prediction_time="soon"), T + r"prediction_time: bad duration 'soon'"),
        (lambda r: r["outcome"].update(within="30 days"), T + r"outcome.within: bad duration"),
        (lambda r: r["outcome"].update(until="encounter_end"), T + r"outcome: give exactly one"),
        (lambda r: r["index"].update(require=["breathing"]), T + r"index.require: unknown"),
        (lambda r: r["index"].pop("codes"), r"task 'readmission_30d': index.codes: required"),
        (lambda r: r["outcome"].update(codes=["regex:(unclosed"]), T + r"outcome.codes: bad regex"),
        (lambda r: r["outcome"].update(typo=1), r"task 'readmission_30d': outcome.typo: unknown field"),
        (lambda r: r.update(horizon="30d"), r"task 'readmission_30d': horizon: unknown field"),
        (lambda r: r["censoring"].update(followup="forever"), r"task 'readmission_30d': censoring.followup"),
        (lambda r: r.update(name="Bad Name"), r"name: missing or not snake_case"),
    ],
)
def test_malformed_spec_names_task_and_field(edit: Any, match: str) -> None:
    raw = copy.deepcopy(_raw())
    edit(raw)
    with pytest.raises(TaskSpecError, match=match):
        parse_spec(raw, "readmission_30d.yaml")


def test_file_name_must_match_task_name(tmp_path: Path) -> None:
    raw = _raw()
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(TaskSpecError, match="does not match the file name 'other'"):
        load_task("other", tmp_path)


def test_code_patterns_exact_prefix_regex() -> None:
    import pandas as pd

    from ehrfm.labels.spec import CodePattern, codes_matching

    codes = pd.Series(["DIAGNOSIS//ICD//10//I10", "DIAGNOSIS//ICD//9//401", "MEDS_DEATH", "MEDS_DEATHX"])
    assert codes_matching(codes, (CodePattern("MEDS_DEATH"),)).tolist() == [False, False, True, False]
    matched = codes_matching(codes, (CodePattern("DIAGNOSIS//ICD//10//*"),)).tolist()
    assert matched == [True, False, False, False]
    assert codes_matching(codes, (CodePattern("regex:DIAGNOSIS//ICD//(9|10)//.*"),)).sum() == 2


def test_patterns_missing_from_data_warn_naming_task_and_field() -> None:
    spec = load_task("next_visit_codes")
    with pytest.warns(UserWarning, match=r"task 'next_visit_codes': outcome.codes: pattern 'DIAGNOSIS//\*'"):
        msgs = warn_missing_codes([spec], ["ENCOUNTER//INPATIENT//START", "ENCOUNTER//INPATIENT//END"])
    assert len(msgs) == 1


def test_patterns_match_the_raw_code_or_its_encounter_alias() -> None:
    import re

    import pandas as pd

    from ehrfm.labels.spec import CodePattern, codes_matching, relevant_codes_regex

    codes = pd.Series(["HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", "HOSPITAL_DISCHARGE//HOME", "ED_OUT",
                       "ICU_ADMISSION//MICU", "ENCOUNTER//INPATIENT//START"])
    start = codes_matching(codes, (CodePattern("ENCOUNTER//INPATIENT//START"),)).tolist()
    assert start == [True, False, False, False, True]
    assert codes_matching(codes, (CodePattern("regex:ENCOUNTER//[^/]+//END"),)).tolist() == [0, 1, 1, 0, 0]
    assert codes_matching(codes, (CodePattern("HOSPITAL_DISCHARGE//HOME"),)).tolist() == [False, True, False,
                                                                                         False, False]
    # the Spark engine pre-filters events with this regex: every aliased code must pass it
    rx = re.compile(relevant_codes_regex([load_task("mortality_inhospital")]))
    assert [bool(rx.match(c)) for c in codes] == [True, True, True, False, True]


def test_a_canonical_pattern_on_etl_codes_is_not_reported_missing() -> None:
    etl_codes = ["HOSPITAL_ADMISSION//URGENT//TRANSFER FROM HOSPITAL", "HOSPITAL_DISCHARGE//HOME"]
    msgs = warn_missing_codes([load_task("readmission_30d")], etl_codes)
    assert msgs == []
