"""Task specs -> outcome rules: every packaged binary and time-to-event task is simulable with the rule its
YAML states; forecast tasks and specs the simulation cannot read are refused with the task and field named."""

from __future__ import annotations

import dataclasses

import pytest

from ehrfm.labels import load_task
from ehrfm.labels.parse import parse_spec
from ehrfm.schema import INTERVAL_TOKENS
from ehrfm.simulate import OutcomeRule, UnsupportedTaskError
from ehrfm.vocab import Vocabulary

START, DEATH = "ENCOUNTER//INPATIENT//START", "MEDS_DEATH"
VOCAB = Vocabulary.build([*INTERVAL_TOKENS, START, "ENCOUNTER//AMBULATORY//START", DEATH, "LAB//X"])


def test_packaged_tasks() -> None:
    r = OutcomeRule.from_spec(load_task("readmission_30d"), VOCAB)
    assert r.within_days == 30 and r.other_encounter and not r.death_is_outcome and not r.death_excludes
    assert [VOCAB.token(i) for i in r.outcome_mask.nonzero().flatten().tolist()] == [START]
    assert r.horizon_days == 30
    m = OutcomeRule.from_spec(load_task("mortality_inhospital"), VOCAB)
    assert m.until_visit_end and m.within_days is None and m.death_is_outcome and m.horizon_days is None
    los = OutcomeRule.from_spec(load_task("los_gt_7d"), VOCAB)
    assert los.duration_days == 7 and los.index_offset_days == 1 and los.horizon_days == 6
    assert not bool(los.outcome_mask.any())
    tte = OutcomeRule.from_spec(load_task("death_1y_tte"), VOCAB)
    assert tte.kind == "time_to_event" and tte.within_days == 365 and tte.death_is_outcome
    assert OutcomeRule.from_spec(load_task("mortality_30d_post_discharge"), VOCAB).within_days == 30


def _spec(**outcome: object) -> dict[str, object]:
    return {"name": "t", "kind": "binary", "index": {"codes": START}, "prediction_time": "0h",
            "outcome": outcome}


@pytest.mark.parametrize(("raw", "field"), [
    (_spec(codes="LAB//Y", within="30d"), "outcome.codes"),
    ({**_spec(at="next_encounter", next_encounter="regex:ENCOUNTER//[^/]+//START", codes="DIAGNOSIS//*"),
      "kind": "forecast"}, "kind"),
])
def test_unsupported_specs_name_task_and_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(UnsupportedTaskError, match=rf"task 't': {field}"):
        OutcomeRule.from_spec(parse_spec(raw), VOCAB)


def test_a_spec_without_a_window_is_refused() -> None:
    # the YAML parser already demands a window; a TaskSpec built in code may still lack one
    spec = parse_spec(_spec(codes=DEATH, within="30d"))
    spec = dataclasses.replace(spec, outcome=dataclasses.replace(spec.outcome, within=None))
    with pytest.raises(UnsupportedTaskError, match=r"task 't': outcome.within"):
        OutcomeRule.from_spec(spec, VOCAB)


def test_death_exclude_censoring() -> None:
    raw = {**_spec(codes=START, within="30d"), "censoring": {"death": "exclude"}}
    assert OutcomeRule.from_spec(parse_spec(raw), VOCAB).death_excludes
