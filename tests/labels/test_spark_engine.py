"""One rule, two engines: the Spark-expression engine (``spark_engine``) equals the per-subject reference
(``label_subject_rows``) row for row, every column -- on random timelines drawn by hypothesis for every
shipped task and for specs exercising the rest of the task language, and on hand-made ties."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ehrfm.labels import label_events, load_tasks, parse_spec
from ehrfm.labels.direct import sort_labels
from ehrfm.labels.spec import TaskSpec
from ehrfm.schema import LABELS_SCHEMA

from .timelines import BIRTH_ROW, D, ev, stay

# the rest of the language, beyond what the shipped tasks use
EXTRA_SPECS = [
    {"name": "x_history_followup_none", "kind": "binary",
     "index": {"codes": "ENCOUNTER//INPATIENT//END"}, "prediction_time": "0h",
     "exclusions": {"min_history": "10d", "death_during_encounter": "2d"},
     "outcome": {"codes": ["ENCOUNTER//INPATIENT//START", "LAB//*"], "within": "7d", "same_encounter": True},
     "censoring": {"followup": "none", "death": "exclude"}},
    {"name": "x_until_tte", "kind": "time_to_event",
     "index": {"codes": "regex:ENCOUNTER//(INPATIENT|ED)//START", "require": ["encounter_ongoing"]},
     "prediction_time": "+12h", "outcome": {"codes": "DIAGNOSIS//*", "until": "encounter_end", "grace": "1d",
                                            "other_encounter": True}},
    {"name": "x_until_binary", "kind": "binary",
     "index": {"codes": "DIAGNOSIS//*", "require": ["alive"]}, "prediction_time": "-6h",
     "exclusions": {"death_during_encounter": True},
     "outcome": {"codes": "regex:MEDS_DEATH|LAB//L0", "until": "encounter_end"}},
    {"name": "x_tte_other", "kind": "time_to_event", "index": {"codes": "LAB//*"}, "prediction_time": "0h",
     "outcome": {"codes": "ENCOUNTER//*", "within": "20d", "other_encounter": True},
     "censoring": {"followup": "none"}},
    {"name": "x_forecast_within_empty", "kind": "forecast", "index": {"codes": "ENCOUNTER//ED//END"},
     "prediction_time": "+1h", "outcome": {"at": "next_encounter", "within": "15d", "allow_empty": True,
                                           "next_encounter": "regex:ENCOUNTER//(INPATIENT|ED)//START",
                                           "codes": ["DIAGNOSIS//*", "LAB//L1"]}},
    {"name": "x_los_index_by_code", "kind": "binary", "index": {"codes": "DIAGNOSIS//X1"},
     "prediction_time": "0h", "outcome": {"encounter_duration_gt": "2d"}},
    # a raw MEDS-ETL pattern (no alias involved in the match) beside the canonical outcome it aliases to
    {"name": "x_etl_raw_discharge", "kind": "binary", "index": {"codes": "HOSPITAL_DISCHARGE//HOME"},
     "prediction_time": "0h", "exclusions": {"death_during_encounter": True},
     "outcome": {"codes": "regex:ENCOUNTER//(INPATIENT|EMERGENCY)//START", "within": "10d",
                 "other_encounter": True}},
]
SPECS: list[TaskSpec] = load_tasks("all") + [parse_spec(s) for s in EXTRA_SPECS]
ENGINE_COLS = ["subject_id", "time", "code", "encounter_id"]
CODES = ["ENCOUNTER//INPATIENT//START", "ENCOUNTER//INPATIENT//END", "ENCOUNTER//ED//START",
         "ENCOUNTER//ED//END", "ENCOUNTER//AMBULATORY//START", "ENCOUNTER//AMBULATORY//END", "MEDS_DEATH",
         "DIAGNOSIS//X1", "DIAGNOSIS//X2", "LAB//L0", "LAB//L1",
         # MEDS MIMIC-IV ETL codes, read through the encounter aliases (ehrfm.labels.aliases)
         "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", "HOSPITAL_ADMISSION//ELECTIVE//UNK",
         "HOSPITAL_DISCHARGE//HOME", "HOSPITAL_DISCHARGE//DIED", "ED_REGISTRATION", "ED_OUT",
         "ICU_ADMISSION//MICU"]
# (START, END) codes of a whole stay: both conventions, mixed within one subject
STAYS = [("ENCOUNTER//INPATIENT//START", "ENCOUNTER//INPATIENT//END"),
         ("ENCOUNTER//ED//START", "ENCOUNTER//ED//END"),
         ("HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", "HOSPITAL_DISCHARGE//HOME"),
         ("HOSPITAL_ADMISSION//ELECTIVE//UNK", "HOSPITAL_DISCHARGE//DIED"), ("ED_REGISTRATION", "ED_OUT")]


def spark_labels(spark: Any, events: pd.DataFrame, specs: list[TaskSpec]) -> dict[str, pa.Table]:
    """The Spark engine over an in-memory population: every task in one query, its per-subject label arrays
    flattened here (the written tables go through ``task_table`` in test_spark_parity)."""
    from ehrfm.labels.spark_engine import LABEL_FIELDS, labels_by_task

    frame = spark.createDataFrame(events[ENGINE_COLS], "subject_id long, time timestamp_ntz, code string, "
                                                      "encounter_id string")
    by_task = labels_by_task(frame, specs).toArrow()
    out = {}
    for s in specs:
        lists = by_task.column(s.name).combine_chunks()
        rows = lists.flatten()
        subject = pa.compute.take(by_task.column("subject_id"), lists.value_parent_indices())
        cols = {"subject_id": subject, "prediction_time": rows.field("pred").cast(pa.timestamp("us"))}
        cols |= {k: rows.field(k) for k in LABEL_FIELDS}
        out[s.name] = sort_labels(pa.table(cols).cast(LABELS_SCHEMA))
    return out


def assert_same(spark: Any, events: pd.DataFrame, specs: list[TaskSpec] = SPECS) -> dict[str, pa.Table]:
    """Both engines on ``events``: identical tables for every spec; returns the reference's."""
    ref = label_events(events, specs)
    got = spark_labels(spark, events, specs)
    for s in specs:
        assert got[s.name].equals(ref[s.name]), (s.name, got[s.name].to_pandas(), ref[s.name].to_pandas())
    return ref


# --- random timelines ---------------------------------------------------------------------------------------
# times on a 6-hour grid over ~90 days (ties, windows hit exactly at their ends), a few far ones; small id
# spaces so that encounters share ids across classes, deaths carry ids, and events lack them
_time = st.one_of(st.integers(0, 360).map(lambda k: 6.0 * k), st.sampled_from([-400 * D, 500 * D]),
                  st.integers(0, 2000).map(float))
_event = st.tuples(st.one_of(_time, st.none()), st.sampled_from(CODES),
                   st.sampled_from([None, "a", "b", "c"]))


@st.composite
def populations(draw: st.DrawFn) -> pd.DataFrame:
    """1-12 subjects of 0-25 events each, plus whole stays (START and END with one id) to make encounters."""
    frames = []
    for sid in range(draw(st.integers(1, 12))):
        rows: list[tuple[object, str, str | None]] = [BIRTH_ROW] + draw(st.lists(_event, max_size=25))
        for enc in draw(st.lists(st.sampled_from(["a", "b", "d"]), max_size=3)):
            start = draw(st.integers(0, 300)) * 6.0
            opens, closes = draw(st.sampled_from(STAYS))
            rows += [(start, opens, enc), (start + draw(st.integers(1, 60)) * 6.0, closes, enc)]
        frames.append(ev(100 + sid, rows))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.spark
@pytest.mark.slow
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(events=populations())
def test_engines_agree_on_random_timelines(spark: Any, events: pd.DataFrame) -> None:
    assert_same(spark, events)


# --- hand-made cases ----------------------------------------------------------------------------------------
@pytest.mark.spark
def test_ties_resolve_by_code_then_encounter_id_whatever_the_row_order(spark: Any) -> None:
    # two inpatient stays end at the same instant; a later START carries "x": an outcome for index "y" only
    # (other_encounter), so the label depends on which discharge is the row's index event -- always "x"
    rows = [BIRTH_ROW, *stay("y", 24, 48), *stay("x", 0, 48),
            (48 + 5 * D, "ENCOUNTER//INPATIENT//START", "x"), (48 + 40 * D, "LAB//L0", None)]
    specs = load_tasks("readmission_30d")
    forward = assert_same(spark, ev(1, rows), specs)
    backward = assert_same(spark, ev(1, rows[::-1]), specs)
    assert forward["readmission_30d"].equals(backward["readmission_30d"])
    assert forward["readmission_30d"].column("boolean_value").to_pylist() == [False]


@pytest.mark.spark
def test_subjects_without_events_the_tasks_read_and_untimed_events(spark: Any) -> None:
    events = pd.concat([ev(1, [BIRTH_ROW, (None, "GENDER//F", None), (5.0, "LAB//L0", None)]),
                        ev(2, [(None, "ENCOUNTER//INPATIENT//END", "a")]),
                        ev(3, [BIRTH_ROW, *stay("a", 0, 30 * D), (None, "MEDS_DEATH", "a"),
                               (90 * D, "LAB//L0", None)])],
                       ignore_index=True)
    ref = assert_same(spark, events)
    assert ref["readmission_30d"].column("subject_id").to_pylist() == [3]  # the untimed death is never read
