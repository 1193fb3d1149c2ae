"""Index / prediction_time / outcome-window logic on hand-made timelines, one edge case per test."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from ehrfm.labels import label_subject, load_task
from ehrfm.schema import LABELS_SCHEMA

from .timelines import T0, D, after_death_subject, ev, stay

BIRTH = (-(20 * 365 * D), "MEDS_BIRTH", None)


def lab(events: pd.DataFrame, task: str) -> pd.DataFrame:
    return label_subject(events, load_task(task))


def h(hours: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(hours=hours)


def test_readmission_exactly_at_30_days_is_positive_one_minute_later_negative() -> None:
    end_a = 48.0
    on_time = ev(1, [BIRTH, *stay("a", 0, end_a), *stay("b", end_a + 30 * D, end_a + 31 * D)])
    late = ev(1, [BIRTH, *stay("a", 0, end_a), *stay("b", end_a + 30 * D + 1 / 60, end_a + 31 * D)])
    got = lab(on_time, "readmission_30d")
    assert got["prediction_time"].tolist()[0] == h(end_a)
    assert got["boolean_value"].tolist()[0] is True
    got_late = lab(late, "readmission_30d")
    assert got_late["boolean_value"].tolist()[0] is False  # record goes on past 30 d: a known negative
    # the second stay's discharge has no follow-up after it: censored, no row
    assert len(got) == 1 and len(got_late) == 1


def test_readmission_at_the_discharge_instant_is_input_not_outcome() -> None:
    # B starts AT A's discharge (= prediction_time): visible to the model, so it cannot be the outcome
    events = ev(1, [BIRTH, *stay("a", 0, 48), *stay("b", 48, 96), (48 + 40 * D, "LAB//X", None)])
    got = lab(events, "readmission_30d")
    assert got[got["prediction_time"] == h(48)]["boolean_value"].tolist() == [False]


def test_short_followup_without_readmission_is_censored_but_death_is_negative() -> None:
    short = ev(1, [BIRTH, *stay("a", 0, 48), (48 + 10 * D, "LAB//X", None)])
    assert lab(short, "readmission_30d").empty
    assert lab(short, "mortality_30d_post_discharge").empty
    dies = ev(1, [BIRTH, *stay("a", 0, 48), (48 + 10 * D, "MEDS_DEATH", None)])
    assert lab(dies, "readmission_30d")["boolean_value"].tolist() == [False]
    assert lab(dies, "mortality_30d_post_discharge")["boolean_value"].tolist() == [True]
    tte = lab(dies, "death_1y_tte")
    assert tte["duration_days"].tolist() == [pytest.approx(10.0)] and tte["event"].tolist() == [1]
    cens = lab(short, "death_1y_tte")
    assert cens["duration_days"].tolist() == [pytest.approx(10.0)] and cens["event"].tolist() == [0]


def test_death_exactly_at_discharge_excludes_discharge_tasks_and_is_inhospital_death() -> None:
    events = ev(1, [BIRTH, *stay("a", 0, 72), (72, "MEDS_DEATH", None)])
    for task in ("readmission_30d", "mortality_30d_post_discharge", "death_1y_tte", "next_visit_codes"):
        assert lab(events, task).empty, task
    got = lab(events, "mortality_inhospital")
    assert got["prediction_time"].tolist() == [h(24)] and got["boolean_value"].tolist() == [True]


def test_death_timed_at_a_date_2359_after_a_same_day_discharge_is_post_discharge() -> None:
    # MIMIC out-of-hospital death: patients.dod (a date) -> 23:59:59, no encounter id, after a 10:00 discharge
    events = ev(1, [BIRTH, *stay("a", 0, 26), (pd.Timestamp("2020-01-02 23:59:59"), "MEDS_DEATH", None)])
    assert h(26) == pd.Timestamp("2020-01-02 10:00")
    assert lab(events, "mortality_inhospital")["boolean_value"].tolist() == [False]
    assert lab(events, "mortality_30d_post_discharge")["boolean_value"].tolist() == [True]
    # died first: complete follow-up
    assert lab(events, "readmission_30d")["boolean_value"].tolist() == [False]


def test_inhospital_death_after_a_date_precision_discharge_is_linked_by_encounter_id() -> None:
    # MIMIC in-hospital death: dischtime recorded as 00:00, deathtime 22:20 that day, both with the hadm_id
    start, end = pd.Timestamp("2020-01-01 08:00"), pd.Timestamp("2020-01-05 00:00")
    death = (pd.Timestamp("2020-01-05 22:20"), "MEDS_DEATH", "a")
    events = ev(1,
                [BIRTH, (start, "ENCOUNTER//INPATIENT//START", "a"), (end, "ENCOUNTER//INPATIENT//END", "a"),
                 death])
    assert lab(events, "mortality_inhospital")["boolean_value"].tolist() == [True]
    for task in ("mortality_30d_post_discharge", "readmission_30d", "death_1y_tte"):
        assert lab(events, task).empty, task


def test_ed_visit_sharing_the_admission_id_does_not_stretch_the_stay() -> None:
    # MIMIC: the ED visit before an admission carries the admission's hadm_id
    events = ev(1, [BIRTH, *stay("a", -20, 2, kind="EMERGENCY"), *stay("a", 0, 7 * D - 1)])
    assert lab(events, "los_gt_7d")["boolean_value"].tolist() == [False]  # 7 d - 1 h from the INPATIENT START


def test_stays_shorter_than_24h_are_not_indexed_at_admission_plus_24h() -> None:
    short = ev(1, [BIRTH, *stay("a", 0, 23.9), (50 * D, "LAB//X", None)])
    assert lab(short, "mortality_inhospital").empty and lab(short, "los_gt_7d").empty
    exactly = ev(1, [BIRTH, *stay("a", 0, 24), (50 * D, "LAB//X", None)])
    assert lab(exactly, "mortality_inhospital").empty  # the END at prediction_time is visible: not ongoing


def test_los_is_measured_in_time_between_start_and_end() -> None:
    # many events inside the stay do not change its length
    filler = [(24 + i / 10, "LAB//X", "a") for i in range(50)]
    seven = ev(1, [BIRTH, *stay("a", 0, 7 * D), *filler])
    more = ev(1, [BIRTH, *stay("a", 0, 7 * D + 1 / 60)])
    assert lab(seven, "los_gt_7d")["boolean_value"].tolist() == [False]
    assert lab(more, "los_gt_7d")["boolean_value"].tolist() == [True]
    open_stay = ev(1, [BIRTH, (0, "ENCOUNTER//INPATIENT//START", "a"), (30, "LAB//X", "a")])
    assert lab(open_stay, "los_gt_7d").empty  # never closed: unknown length


def test_overlapping_encounters() -> None:
    # B starts inside A: not a readmission after A (it began before A's discharge)
    events = ev(1, [BIRTH, *stay("a", 0, 100), *stay("b", 50, 200), (200 + 60 * D, "LAB//X", None)])
    got = lab(events, "readmission_30d").set_index("prediction_time")["boolean_value"]
    assert got.to_dict() == {h(100): False, h(200): False}
    # both stays are ongoing 24 h after their own admission
    assert lab(events, "mortality_inhospital")["prediction_time"].tolist() == [h(24), h(74)]


def test_subject_without_inpatient_stay_has_no_rows_in_schema() -> None:
    events = ev(7,
                [BIRTH, (None, "GENDER//F", None), *stay("x", 0, 1, kind="AMBULATORY"), (10, "LAB//X", "x")])
    for task in ("readmission_30d", "mortality_inhospital", "los_gt_7d", "death_1y_tte", "next_visit_codes"):
        got = lab(events, task)
        assert got.empty and list(got.columns) == LABELS_SCHEMA.names
        assert pa.Table.from_pandas(got, schema=LABELS_SCHEMA, preserve_index=False).num_rows == 0


def test_inhospital_death_window_ends_at_encounter_end_plus_grace() -> None:
    after = ev(1, [BIRTH, *stay("a", 0, 72), (72 + 25, "MEDS_DEATH", None)])
    assert lab(after, "mortality_inhospital")["boolean_value"].tolist() == [False]
    before_pred = ev(1, [BIRTH, *stay("a", 0, 72), (24, "MEDS_DEATH", None)])
    assert lab(before_pred, "mortality_inhospital").empty  # dead AT prediction time: not alive


def test_tte_censors_at_horizon_and_record_end() -> None:
    long = ev(1,
              [BIRTH, *stay("a", 0, 48), (48 + 500 * D, "LAB//X", None), (48 + 600 * D, "MEDS_DEATH", None)])
    got = lab(long, "death_1y_tte")
    assert got["duration_days"].tolist() == [pytest.approx(365.0)] and got["event"].tolist() == [0]
    none = ev(1, [BIRTH, *stay("a", 0, 48)])
    assert lab(none, "death_1y_tte").empty  # the record ends at the discharge: no follow-up


def test_next_visit_codes_uses_the_next_encounter_by_id_or_time_span() -> None:
    events = ev(1, [
        BIRTH, *stay("a", 0, 48), (48, "DIAGNOSIS//ICD//10//A01", "a"),  # index stay's own codes: inputs
        *stay("b", 100, 150), (150, "DIAGNOSIS//ICD//10//B02", "b"),  # MIMIC style: at b's discharge, by id
        (120, "DIAGNOSIS//ICD//10//C03", None),  # no id, inside b's span
        (160, "DIAGNOSIS//ICD//10//D04", None),  # after b: not recorded at b
        *stay("c", 300, 320), (320, "DIAGNOSIS//ICD//10//E05", "c"),
    ])
    got = lab(events, "next_visit_codes").set_index("prediction_time")["target_codes"]
    assert list(got[h(48)]) == ["DIAGNOSIS//ICD//10//B02", "DIAGNOSIS//ICD//10//C03"]
    assert list(got[h(150)]) == ["DIAGNOSIS//ICD//10//E05"]
    assert h(320) not in got.index  # no next encounter


def test_post_prediction_event_cannot_change_an_earlier_label() -> None:
    """Leakage: events after the outcome window never change a label."""
    base = [BIRTH, *stay("a", 0, 48), *stay("b", 48 + 10 * D, 48 + 12 * D), (48 + 40 * D, "LAB//X", None)]
    a = lab(ev(1, base), "readmission_30d")
    planted = ev(1,
                 [*base, (48 + 35 * D, "ENCOUNTER//INPATIENT//START", "z"),
                  (48 + 36 * D, "MEDS_DEATH", None)])
    b = lab(planted, "readmission_30d")
    pd.testing.assert_frame_equal(a.iloc[:1], b.iloc[:1])


# --- encounter code aliases (MEDS MIMIC-IV ETL codes) ------------------------------------------------------
def test_both_code_conventions_give_identical_labels_for_every_shipped_task() -> None:
    from ehrfm.labels import label_events, load_tasks

    from .timelines import as_meds_etl, random_population

    canonical = random_population(40, seed=5)
    etl = as_meds_etl(canonical)
    assert not etl["code"].str.startswith("ENCOUNTER//INPATIENT").any()  # really converted
    assert etl["code"].str.startswith("HOSPITAL_DISCHARGE//").any()
    specs = load_tasks("all")
    want, got = label_events(canonical, specs), label_events(etl, specs)
    for spec in specs:
        assert want[spec.name].num_rows > 0, spec.name
        assert got[spec.name].equals(want[spec.name]), spec.name


def test_mimic_etl_stay_is_an_inpatient_encounter_and_the_ed_visit_does_not_stretch_it() -> None:
    # the ETL's codes, hadm_id "a" on all: ED visit from -20 h, admission at 0, discharge after 7 d - 1 h
    events = ev(1, [BIRTH, (-20, "ED_REGISTRATION", "a"), (2, "ED_OUT", "a"),
                    (0, "HOSPITAL_ADMISSION//URGENT//TRANSFER FROM HOSPITAL", "a"),
                    (7 * D - 1, "HOSPITAL_DISCHARGE//SKILLED NURSING FACILITY", "a"),
                    (7 * D + 40 * D, "LAB//50912//mg/dL", None)])
    assert lab(events, "los_gt_7d")["boolean_value"].tolist() == [False]
    assert lab(events, "mortality_inhospital")["prediction_time"].tolist() == [h(24)]
    assert lab(events, "readmission_30d")["boolean_value"].tolist() == [False]


def test_etl_inhospital_death_after_a_date_precision_discharge_is_linked_by_encounter_id() -> None:
    events = ev(1, [BIRTH,
                    (pd.Timestamp("2020-01-01 08:00"), "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM", "a"),
                    (pd.Timestamp("2020-01-05 00:00"), "HOSPITAL_DISCHARGE//DIED", "a"),
                    (pd.Timestamp("2020-01-05 22:20"), "MEDS_DEATH", "a")])
    assert lab(events, "mortality_inhospital")["boolean_value"].tolist() == [True]
    for task in ("mortality_30d_post_discharge", "readmission_30d", "death_1y_tte"):
        assert lab(events, task).empty, task


def test_a_raw_etl_pattern_still_matches_only_its_own_codes() -> None:
    from ehrfm.labels import parse_spec

    home = parse_spec({"name": "home", "kind": "binary", "index": {"codes": "HOSPITAL_DISCHARGE//HOME"},
                       "prediction_time": "0h",
                       "outcome": {"codes": "ENCOUNTER//INPATIENT//START", "within": "30d",
                                   "other_encounter": True}})
    events = ev(1, [BIRTH, (0, "HOSPITAL_ADMISSION//ELECTIVE//PHYSICIAN REFERRAL", "a"),
                    (48, "HOSPITAL_DISCHARGE//HOME", "a"),
                    (48 + 5 * D, "HOSPITAL_ADMISSION//URGENT//EMERGENCY ROOM", "b"),
                    (48 + 9 * D, "HOSPITAL_DISCHARGE//REHAB", "b"), (48 + 90 * D, "LAB//X", None)])
    got = label_subject(events, home)
    # the REHAB discharge is no index; the canonical outcome pattern matches the raw HOSPITAL_ADMISSION
    assert got["prediction_time"].tolist() == [h(48)] and got["boolean_value"].tolist() == [True]


def test_icu_stays_are_not_encounters() -> None:
    from ehrfm.labels.aliases import canonical_code

    assert canonical_code("ICU_ADMISSION//Medical Intensive Care Unit (MICU)").startswith("ICU_ADMISSION")
    assert canonical_code("HOSPITAL_ADMISSIONX") == "HOSPITAL_ADMISSIONX"  # whole-segment match only
    assert canonical_code("ED_REGISTRATION//x") == "ENCOUNTER//EMERGENCY//START"
    # an ICU stay alone opens no inpatient encounter
    events = ev(1, [BIRTH, (0, "ICU_ADMISSION//MICU", "a"), (5 * D, "ICU_DISCHARGE//MICU", "a")])
    assert lab(events, "mortality_inhospital").empty and lab(events, "los_gt_7d").empty


def test_events_after_death_are_inputs_never_indexes_or_outcomes() -> None:
    """Events dated after the subject's first MEDS_DEATH (kept by ingest and counted per source; Synthea
    452, MIMIC-IV demo 86): an encounter after death is never an index (every shipped task requires the
    patient alive at prediction time), a record after the death is never an outcome (the late "readmission"
    does not make the discharge positive: the death came first, ``censoring.death``), nor the next encounter
    of a forecast, and the death, not the later record, is the time-to-event."""
    events = after_death_subject(1)
    readm = lab(events, "readmission_30d")
    assert readm["prediction_time"].tolist() == [h(48)]  # the post-mortem discharge is not an index
    assert readm["boolean_value"].tolist() == [False]
    assert lab(events, "mortality_30d_post_discharge")["boolean_value"].tolist() == [True]
    assert lab(events, "mortality_inhospital")["prediction_time"].tolist() == [h(24)]  # only the real stay
    assert lab(events, "los_gt_7d")["prediction_time"].tolist() == [h(24)]
    tte = lab(events, "death_1y_tte")
    assert tte["prediction_time"].tolist() == [h(48)]
    assert tte["duration_days"].tolist() == [pytest.approx(10.0)] and tte["event"].tolist() == [1]
    assert lab(events, "next_visit_codes").empty  # the only later encounter is post-mortem
