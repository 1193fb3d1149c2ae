"""``pick_subject``: the demo's served patient is a held-out subject with an inpatient stay, in either code
convention (ours, ``ENCOUNTER//INPATIENT//START``, or the MEDS MIMIC-IV ETL's ``HOSPITAL_ADMISSION//…``)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from ehrfm.serve.example import pick_subject
from tests.helpers.meds import write_meds


def _dataset(root: Path, stay_code: str) -> Path:
    t = pd.Timestamp("2020-01-01")
    rows = [(1, t, "LAB//1//mg/dL"), (1, t, "LAB//2//mg/dL"), (1, t, "LAB//3//mg/dL"),  # most events, no stay
            (2, t, stay_code), (2, t, "LAB//1//mg/dL"),
            (3, t, stay_code),
            (4, t, stay_code), (4, t, "LAB//1//mg/dL"), (4, t, "LAB//2//mg/dL"), (4, t, "LAB//3//mg/dL")]
    events = pd.DataFrame(rows, columns=["subject_id", "time", "code"]).assign(
        numeric_value=None, encounter_id=None)
    splits = pd.DataFrame({"subject_id": [1, 2, 3, 4],
                           "split": ["held_out", "held_out", "held_out", "train"]})
    return write_meds(root, events, splits)


@pytest.mark.parametrize("stay_code", ["ENCOUNTER//INPATIENT//START", "HOSPITAL_ADMISSION//EW EMER.//UNK"])
def test_pick_subject_prefers_a_held_out_inpatient_stay_in_either_convention(tmp_path: Path,
                                                                              stay_code: str) -> None:
    # subject 1 has the most held-out events but no stay; 4 has a stay but is in train
    assert pick_subject(_dataset(tmp_path, stay_code)) == 2


def test_pick_subject_falls_back_to_any_held_out_subject(tmp_path: Path) -> None:
    assert pick_subject(_dataset(tmp_path, "ICU_ADMISSION//MICU")) == 1
