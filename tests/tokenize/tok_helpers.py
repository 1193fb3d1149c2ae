"""Helpers shared by the tokenizer tests: hand-made MEDS frames of one subject."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from ehrfm.vocab import Vocabulary

Event = tuple[Any, ...]  # (time | None, code, value | None, encounter_id | None)


def frame(subject_id: int, events: Sequence[Event]) -> pd.DataFrame:
    """Events of one subject in EVENTS_SCHEMA column names (time strings parsed; None = static)."""
    rows = []
    for e in events:
        t, code, value, enc = (*e, None, None, None)[:4]
        rows.append(
            {
                "subject_id": subject_id,
                "time": pd.Timestamp(t) if t is not None else pd.NaT,
                "code": code,
                "numeric_value": float("nan") if value is None else float(value),
                "encounter_id": enc,
            }
        )
    df = pd.DataFrame(rows)
    df["time"] = df["time"].astype("datetime64[us]")
    df["numeric_value"] = df["numeric_value"].astype("float32")
    return df


def patient(subject_id: int = 1) -> pd.DataFrame:
    """Two inpatient encounters 40 days apart, an encounter-less lab 3 days before, static sex."""
    return frame(
        subject_id,
        [
            (None, "GENDER//F"),
            ("1960-01-01", "MEDS_BIRTH"),
            ("2020-01-01 08:00", "LAB//A", 1.0),
            ("2020-01-04 10:00", "ENCOUNTER//INPATIENT//START", None, "e1"),
            ("2020-01-04 11:00", "LAB//A", 5.0, "e1"),
            ("2020-01-04 11:00", "DIAGNOSIS//X", None, "e1"),
            ("2020-01-06 09:00", "ENCOUNTER//INPATIENT//END", None, "e1"),
            ("2020-02-15 10:00", "ENCOUNTER//INPATIENT//START", None, "e2"),
            ("2020-02-15 12:00", "LAB//A", 9.0, "e2"),
            ("2020-02-16 12:00", "DIAGNOSIS//Y", None, "e2"),
            ("2020-02-20 09:00", "ENCOUNTER//INPATIENT//END", None, "e2"),
        ],
    )


CODES = ["LAB//A", "DIAGNOSIS//X", "DIAGNOSIS//Y", "ENCOUNTER//INPATIENT//START", "ENCOUNTER//INPATIENT//END",
         "MEDS_DEATH"]



def tokens(row: dict[str, Any], vocab: Vocabulary) -> list[str]:
    """The token strings of a row."""
    return [vocab.token(int(i)) for i in row["concept_ids"]]


def population() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(events, labels with a task column, splits) for a handful of subjects, incl. one with labels only."""
    from ehrfm.schema import TRAIN_SPLIT

    evs = [patient(1), patient(2).assign(numeric_value=lambda d: d["numeric_value"] * 0.5)]
    evs.append(frame(3, [(None, "GENDER//M"), ("1990-03-03", "MEDS_BIRTH"), ("2021-05-05", "LAB//A", 3.3),
                         ("2021-05-05 01:00", "MEDS_DEATH")]))
    evs.append(frame(4, [("2019-01-01", "DIAGNOSIS//X"), ("2019-01-01", "RARE//Z", 1.0)]))
    events = pd.concat(evs, ignore_index=True)
    def pt(x: list[str]) -> pd.Series:
        return pd.Series(pd.to_datetime(x, format="ISO8601"))
    labels = pd.DataFrame(
        {
            "subject_id": [1, 1, 2, 3, 5, 1],
            "task": ["t1", "t1", "t1", "t1", "t1", "t2"],
            "prediction_time": pt(["2020-01-06 09:00", "2020-02-15 12:00", "2020-01-05", "2021-05-05",
                                   "2021-01-01", "2020-01-06 09:00"]),
            "boolean_value": [True, False, False, True, False, None],
            "duration_days": [None, None, None, None, None, 12.5],
            "event": pd.array([None, None, None, None, None, 1], dtype="Int8"),
            "target_codes": [None, None, None, None, None, ["DIAGNOSIS//Y", "UNKNOWN"]],
        }
    )
    splits = pd.DataFrame({"subject_id": [1, 2, 3, 4, 5],
                           "split": [TRAIN_SPLIT, TRAIN_SPLIT, "tuning", "held_out", TRAIN_SPLIT]})
    return events, labels, splits

