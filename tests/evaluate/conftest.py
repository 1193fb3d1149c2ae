"""A tiny synthetic MEDS dataset with planted risk, labels for a binary, a TTE and a forecasting task,
and a synthetic truth table — all in a session-scoped temp folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ehrfm.schema import EVENTS_SCHEMA, LABELS_SCHEMA

T0 = pd.Timestamp("2020-01-01")


@dataclass
class Synth:
    meds: Path
    labels: Path
    truth: Path
    events: pd.DataFrame
    labels_by_task: dict[str, pd.DataFrame]
    truth_df: pd.DataFrame


def make_synthetic(root: Path, n: int = 300, seed: int = 0) -> Synth:
    """n subjects; ~30% have two index events. Outcome risk rises with a RISK code and age; a FUTURE code
    recorded after prediction_time is a perfect outcome marker (it must never reach features)."""
    rng = np.random.default_rng(seed)
    ev: list[tuple[int, pd.Timestamp | None, str]] = []
    rows: list[dict[str, object]] = []
    truth: list[dict[str, object]] = []
    for s in range(1, n + 1):
        birth = T0 - pd.Timedelta(days=int(rng.integers(20 * 365, 90 * 365)))
        ev += [(s, birth, "MEDS_BIRTH"), (s, None, f"GENDER//{'F' if rng.random() < 0.5 else 'M'}"),
               (s, None, f"RACE//{rng.choice(['WHITE', 'BLACK', 'ASIAN'])}")]
        risky = rng.random() < 0.4
        for k in range(int(rng.integers(1, 3))):
            pt = T0 + pd.Timedelta(days=int(k * 400 + rng.integers(0, 300)), hours=12)
            ev.append((s, pt - pd.Timedelta(days=1), f"INSURANCE//{rng.choice(['MEDICARE', 'PRIVATE'])}"))
            for _ in range(int(rng.integers(3, 12))):
                ev.append((s, pt - pd.Timedelta(days=int(rng.integers(0, 700))),
                           f"DIAGNOSIS//ICD//10//C{rng.integers(0, 15)}"))
            if risky:
                ev.append((s, pt - pd.Timedelta(days=int(rng.integers(0, 25))), "DIAGNOSIS//ICD//10//RISK"))
            age = (pt - birth).days / 365.25
            p = 1 / (1 + np.exp(-(-2.0 + 2.5 * risky + 0.03 * (age - 55))))
            y = bool(rng.random() < p)
            if y:
                ev.append((s, pt + pd.Timedelta(days=3), "DIAGNOSIS//ICD//10//FUTURE"))
            dur = float(rng.exponential(100 / (1 + 3 * risky)))
            cens = float(rng.uniform(10, 150))
            targets = [f"DIAGNOSIS//ICD//10//C{c}" for c in rng.choice(15, size=3, replace=False) if c < 6
                       or risky]
            rows.append({"subject_id": s, "prediction_time": pt, "boolean_value": y,
                         "duration_days": min(dur, cens),
                         "event": int(dur <= cens), "target_codes": targets})
            truth.append({"subject_id": s, "task": "readmission", "prediction_time": pt, "true_prob": p,
                          "outcome": y})
    events = pd.DataFrame(ev, columns=["subject_id", "time", "code"]).sort_values(["subject_id", "time"],
                                                                                  na_position="first")
    meds = root / "meds"
    (meds / "data").mkdir(parents=True)
    (meds / "metadata").mkdir()
    full = events.assign(numeric_value=np.nan, text_value=None, encounter_id=None, unit=None,
                         source="synthetic")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pandas(full, schema=EVENTS_SCHEMA, preserve_index=False),
                   meds / "data" / "part-0.parquet")
    split = np.where(np.arange(1, n + 1) % 5 < 3, "train",
                     np.where(np.arange(1, n + 1) % 5 == 3, "tuning", "held_out"))
    pd.DataFrame({"subject_id": np.arange(1, n + 1, dtype=np.int64),
                  "split": split}).to_parquet(meds / "metadata" / "subject_splits.parquet")
    lab = pd.DataFrame(rows)
    labels = root / "labels"
    labels.mkdir()
    by_task = {
        "readmission": lab[["subject_id", "prediction_time", "boolean_value"]],
        "death_tte": lab[["subject_id", "prediction_time", "duration_days", "event"]],
        "next_dx": lab[["subject_id", "prediction_time", "target_codes"]],
    }
    for task, df in by_task.items():
        cols = [pa.array(df[f.name], type=f.type) if f.name in df else pa.nulls(len(df), f.type)
                for f in LABELS_SCHEMA]
        pq.write_table(pa.Table.from_arrays(cols, schema=LABELS_SCHEMA), labels / f"{task}.parquet")
    (root / "truth").mkdir()
    truth_df = pd.DataFrame(truth)
    truth_df.to_parquet(root / "truth" / "index_events.parquet")
    return Synth(meds, labels, root / "truth" / "index_events.parquet", events, by_task, truth_df)


@pytest.fixture(scope="session")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Synth:
    """The synthetic dataset (300 subjects, ~450 label rows per task)."""
    return make_synthetic(tmp_path_factory.mktemp("evalsynth"))
