"""One prediction from a registered model, as a client would ask for it (used by ``ehrfm demo``).

Loads ``models:/<name>@<alias>`` with ``mlflow.pyfunc.load_model`` (the same object ``mlflow models serve``
wraps) and scores one subject's MEDS events sent as the JSON ``events`` column of the serving input.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pyarrow.dataset as ds

from ehrfm.labels.aliases import canonical_code
from ehrfm.layout import MedsPaths
from ehrfm.schema import CODE, EVENT_COLUMNS, SUBJECT_ID, TIME


def pick_subject(meds_dir: str | Path, split: str = "held_out",
                 code_prefix: str = "ENCOUNTER//INPATIENT//") -> int:
    """The held-out subject with the most events among those with an inpatient stay (else any held-out
    subject). Codes are compared in their canonical encounter form (:mod:`ehrfm.labels.aliases`), so a
    MIMIC-IV dataset's ``HOSPITAL_ADMISSION//…`` counts as an inpatient stay."""
    meds = MedsPaths(Path(meds_dir))
    splits = pd.read_parquet(meds.subject_splits)
    ids = set(splits.loc[splits["split"] == split, SUBJECT_ID].astype("int64"))
    if not ids:
        raise ValueError(f"{meds.root}: no subject in split {split!r}")
    table = meds.read_table([SUBJECT_ID, CODE])
    frame = table.to_pandas()
    frame = frame[frame[SUBJECT_ID].isin(ids)]
    codes = pd.Series(frame[CODE].unique())
    stay_codes = codes[codes.map(canonical_code).str.startswith(code_prefix)]
    with_stay = frame.loc[frame[CODE].isin(stay_codes), SUBJECT_ID].unique()
    pool = frame[frame[SUBJECT_ID].isin(with_stay)] if len(with_stay) else frame
    return int(pool[SUBJECT_ID].value_counts().idxmax())


def subject_events_json(meds_dir: str | Path, subject_id: int) -> str:
    """The subject's MEDS events as the JSON list the serving input's ``events`` column takes."""
    meds = MedsPaths(Path(meds_dir))
    frame = meds.read_table(EVENT_COLUMNS, ds.field(SUBJECT_ID) == subject_id).to_pandas()
    frame[TIME] = frame[TIME].map(lambda t: None if pd.isna(t) else t.isoformat())
    records = [{k: (None if (not isinstance(v, str) and pd.isna(v)) else v) for k, v in r.items()}
               for r in frame.to_dict(orient="records")]
    for r in records:
        r[SUBJECT_ID] = subject_id  # a plain int (the parser rejects numpy ints and floats)
    return json.dumps(records)


def served_prediction(model_uri: str, meds_dir: str | Path, split: str = "held_out") -> pd.DataFrame:
    """Score one held-out subject with the registered pyfunc; one output row per task."""
    subject = pick_subject(meds_dir, split)
    request = pd.DataFrame([{"events": subject_events_json(meds_dir, subject)}])
    model = mlflow.pyfunc.load_model(model_uri)
    return pd.DataFrame(model.predict(request))
