"""Hand-made MEDS timelines for the label tests, and the engine-agreement check on real data."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ehrfm.schema import EVENT_COLUMNS

T0 = pd.Timestamp("2020-01-01 08:00")


def ev(subject: int, rows: list[tuple[object, str, str | None]]) -> pd.DataFrame:
    """Events of one subject from (time | hours-after-T0 | None, code, encounter_id) tuples."""
    out = []
    for t, code, enc in rows:
        time: pd.Timestamp | None
        if t is None:
            time = None
        elif isinstance(t, (int, float)):
            time = T0 + pd.Timedelta(hours=float(t))
        else:
            time = pd.Timestamp(str(t))
        out.append({"subject_id": subject, "time": time, "code": code, "numeric_value": None,
                    "text_value": None, "encounter_id": enc, "unit": None, "source": "test"})
    df = pd.DataFrame(out, columns=EVENT_COLUMNS)
    df["time"] = pd.to_datetime(df["time"]).astype("datetime64[us]")
    return df


def stay(enc: str, start_h: float, end_h: float,
         kind: str = "INPATIENT") -> list[tuple[object, str, str | None]]:
    """START and END rows of one encounter (hours after T0)."""
    return [(start_h, f"ENCOUNTER//{kind}//START", enc), (end_h, f"ENCOUNTER//{kind}//END", enc)]


D = 24.0  # hours per day

# one raw MEDS MIMIC-IV ETL code per canonical encounter boundary (ehrfm.labels.aliases): a fixed choice, so
# ties at one instant order the same way in both conventions (the engines order ties by the raw code)
MEDS_ETL_CODES = {
    "ENCOUNTER//INPATIENT//START": "HOSPITAL_ADMISSION//EW EMER.//EMERGENCY ROOM",
    "ENCOUNTER//INPATIENT//END": "HOSPITAL_DISCHARGE//HOME",
    "ENCOUNTER//EMERGENCY//START": "ED_REGISTRATION",
    "ENCOUNTER//EMERGENCY//END": "ED_OUT",
}


def as_meds_etl(events: pd.DataFrame) -> pd.DataFrame:
    """The same events with every aliased encounter boundary written as the MEDS MIMIC-IV ETL writes it
    (``HOSPITAL_ADMISSION//…``, ``ED_OUT``…); other codes (AMBULATORY encounters, labs) unchanged."""
    out = events.copy()
    out["code"] = out["code"].map(lambda c: MEDS_ETL_CODES.get(c, c))
    return out


def random_population(n_subjects: int, seed: int = 0) -> pd.DataFrame:
    """A deterministic random MEDS population exercising every task: stays (some overlapping, some
    shorter than 24 h, some open), diagnoses by encounter id and by time, deaths in and after stays, and
    deaths followed by more records."""
    import numpy as np

    rng = np.random.default_rng(seed)
    frames = []
    for s in range(n_subjects):
        sid = 1000 + s
        rows: list[tuple[object, str, str | None]] = [BIRTH_ROW, (None, "GENDER//" + "FM"[s % 2], None)]
        t = float(rng.uniform(0, 100 * D))
        # some subjects die mid-record and go on being recorded (records dated after death are real data:
        # Synthea 452, MIMIC-IV demo 86 events): nothing after the death may index or be an outcome
        dies_after = int(rng.integers(0, 3)) if rng.random() < 0.15 else None
        died = False
        for k in range(int(rng.integers(0, 5))):
            kind = "INPATIENT" if rng.random() < 0.7 else "AMBULATORY"
            length = float(rng.choice([6.0, 24.0, 3 * D, 8 * D, 20 * D]))
            enc = f"{sid}-{k}"
            rows += stay(enc, t, t + length, kind)
            rows.append((t + length, f"DIAGNOSIS//ICD//10//X{int(rng.integers(0, 6))}", enc))
            rows.append((t + length / 2, f"LAB//L{int(rng.integers(0, 3))}", None))
            if rng.random() < 0.2:
                rows.append((t + length / 3, f"DIAGNOSIS//ICD//9//Y{int(rng.integers(0, 3))}", None))
            t += length + float(rng.choice([-12.0, 0.0, 5 * D, 29 * D, 30 * D, 45 * D, 400 * D]))
            if k == dies_after:
                rows.append((t - float(rng.uniform(1, 10 * D)), "MEDS_DEATH", None))
                died = True
        u = rng.random()
        if died:
            rows.append((t + float(rng.uniform(0, 500 * D)), "LAB//L0", None))
        elif u < 0.15:
            rows.append((t - 1, "MEDS_DEATH", None))  # around the last stay's end
        elif u < 0.3:
            rows.append((t + float(rng.uniform(0, 60 * D)), "MEDS_DEATH", None))
        else:
            rows.append((t + float(rng.uniform(0, 500 * D)), "LAB//L0", None))
        frames.append(ev(sid, rows))
    df = pd.concat(frames, ignore_index=True)
    # MEDS order: subject contiguous, static rows first, then time
    df["_static"] = df["time"].notna()
    return df.sort_values(["subject_id", "_static", "time", "code"], kind="stable").drop(columns="_static")


BIRTH_ROW: tuple[object, str, str | None] = (-(20 * 365 * D), "MEDS_BIRTH", None)
DIES_AT = 48 + 10 * D  # hours after T0: the death in :func:`after_death_subject`


def after_death_subject(sid: int) -> pd.DataFrame:
    """A stay discharged at 48 h, death 10 days later, then records dated after the death: a stay 5–15 days
    after it (with a diagnosis) and a lab — what neither engine may index or count as an outcome."""
    late = DIES_AT + 5 * D
    return ev(sid, [BIRTH_ROW, (None, "GENDER//F", None), *stay(f"{sid}-a", 0, 48),
                    (48, "DIAGNOSIS//ICD//10//X1", f"{sid}-a"), (DIES_AT, "MEDS_DEATH", None),
                    *stay(f"{sid}-late", late, late + 10 * D),
                    (late + 1, "DIAGNOSIS//ICD//10//X2", f"{sid}-late"),
                    (late + 20 * D, "LAB//L0", None)])


def write_meds(df: pd.DataFrame, root: object, n_files: int = 2) -> None:
    """Write ``df`` as an ingested MEDS dataset (data/part-*.parquet and the subject splits)."""
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    from ehrfm.layout import MedsPaths
    from ehrfm.schema import EVENTS_SCHEMA, SPLITS_SCHEMA

    meds = MedsPaths(Path(str(root)))
    meds.data.mkdir(parents=True, exist_ok=True)
    meds.metadata.mkdir(parents=True, exist_ok=True)
    subjects = sorted(df["subject_id"].unique())
    for i in range(n_files):
        part = df[df["subject_id"].isin(subjects[i::n_files])]
        pq.write_table(pa.Table.from_pandas(part, schema=EVENTS_SCHEMA, preserve_index=False),
                       meds.data / f"part-{i}.parquet")
    split_names = [("train", "tuning", "held_out")[s % 3] for s in subjects]
    splits = pd.DataFrame({"subject_id": subjects, "split": split_names})
    pq.write_table(pa.Table.from_pandas(splits, schema=SPLITS_SCHEMA, preserve_index=False),
                   meds.subject_splits)


def assert_engines_agree(labels: dict[str, Any]) -> None:
    """``labels``: ``{task: DataFrame}`` written by the Spark engine and ``"reference"``: ``{task: pa.Table}``
    from the reference engine. Every task has rows and both engines agree on every row and column."""
    for task, ref in labels["reference"].items():
        got = labels[task]
        assert len(got) > 0, task
        pd.testing.assert_frame_equal(got, ref.to_pandas(), obj=task)
