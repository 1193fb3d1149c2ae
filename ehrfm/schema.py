"""Schemas and constants shared by every stage (pyarrow only: no Spark, no torch).

Contracts (see DESIGN.md):
- Events: MEDS 0.4 columns plus extension columns ``encounter_id``, ``unit``, ``source``.
- Rejects: one row per input record that could not become events, with where it came from and why.
- Labels: MEDS LabelSchema files (``subject_id``, ``prediction_time``, the kind's value columns) plus a
  sidecar of the time-to-event / forecast columns; in memory one table of both (LABELS_SCHEMA).
- Token streams: one row per pretraining subject or per (task, label) with parallel list columns.
"""

from __future__ import annotations

import pyarrow as pa

# --- MEDS events -------------------------------------------------------------------------------------
SUBJECT_ID = "subject_id"
TIME = "time"
CODE = "code"
NUMERIC_VALUE = "numeric_value"
TEXT_VALUE = "text_value"
# extension columns (allowed by MEDS 0.4: extra columns after the required ones)
ENCOUNTER_ID = "encounter_id"
UNIT = "unit"
SOURCE = "source"  # e.g. "fhir:Observation", "mimic:labevents"

BIRTH_CODE = "MEDS_BIRTH"
DEATH_CODE = "MEDS_DEATH"

EVENTS_SCHEMA = pa.schema(
    [
        pa.field(SUBJECT_ID, pa.int64(), nullable=False),
        pa.field(TIME, pa.timestamp("us")),
        pa.field(CODE, pa.string(), nullable=False),
        pa.field(NUMERIC_VALUE, pa.float32()),
        pa.field(TEXT_VALUE, pa.large_string()),  # MEDS 0.4 uses large_string
        pa.field(ENCOUNTER_ID, pa.string()),
        pa.field(UNIT, pa.string()),
        pa.field(SOURCE, pa.string()),
    ]
)
EVENT_COLUMNS = [f.name for f in EVENTS_SCHEMA]
# The event shards ``ehrfm ingest`` writes add one column, computed over the whole subject: 1 when the
# event is timed after the subject's first MEDS_DEATH, else 0 (kept, flagged, counted; ehrfm/tasks/README.md).
# A MEDS extension column (dataset.json ``other_extension_columns``); readers select the columns they use.
# int8, not bool: meds_reader 0.2 cannot convert a bool column ("Unsupported type bool").
AFTER_DEATH = "after_death"
DATA_SCHEMA = EVENTS_SCHEMA.append(pa.field(AFTER_DEATH, pa.int8(), nullable=False))

# --- rejects -----------------------------------------------------------------------------------------
REJECTS_SCHEMA = pa.schema(
    [
        pa.field("source_file", pa.string()),
        pa.field("record_index", pa.int64()),  # line number (NDJSON/CSV) or entry index (Bundle), 0-based
        pa.field("resource_type", pa.string()),  # FHIR resourceType or MIMIC table
        pa.field("resource_id", pa.string()),
        pa.field("field", pa.string()),  # the offending field, when one is to blame
        pa.field("reason", pa.string(), nullable=False),
    ]
)

# --- metadata ----------------------------------------------------------------------------------------
CODES_SCHEMA = pa.schema(
    [
        pa.field("code", pa.string(), nullable=False),
        pa.field("description", pa.string()),
        pa.field("parent_codes", pa.list_(pa.string())),
    ]
)
SPLITS_SCHEMA = pa.schema(
    [pa.field(SUBJECT_ID, pa.int64(), nullable=False), pa.field("split", pa.string(), nullable=False)]
)
TRAIN_SPLIT = "train"
TUNING_SPLIT = "tuning"
HELD_OUT_SPLIT = "held_out"
SPLITS = (TRAIN_SPLIT, TUNING_SPLIT, HELD_OUT_SPLIT)

# --- labels ------------------------------------------------------------------------------------------
# Two forms (ehrfm/tasks/README.md, "Output"):
# - on disk, ``<labels>/<task>.parquet`` is a MEDS label file (meds.LabelSchema 0.4: the key columns and only
#   the value columns the task kind fills, none of them null, as meds 0.4 requires of a present value column)
#   and, for time-to-event and forecast tasks, ``<labels>/<task>.extra.parquet``, a sidecar with the columns
#   MEDS has no place for, keyed by (subject_id, prediction_time), rows in the same order;
# - in memory (what the engines produce and ehrfm's one label reader, ehrfm.labels.tables, returns),
#   LABELS_SCHEMA: every column, each task's label in one place: ``boolean_value`` (binary),
#   ``duration_days`` + ``event`` (time-to-event), ``target_codes`` (forecast), the other columns null.
PREDICTION_TIME = "prediction_time"
BOOLEAN_VALUE = "boolean_value"
INTEGER_VALUE = "integer_value"
FLOAT_VALUE = "float_value"
CATEGORICAL_VALUE = "categorical_value"
DURATION_DAYS = "duration_days"
EVENT = "event"
TARGET_CODES = "target_codes"
LABEL_KEY = (SUBJECT_ID, PREDICTION_TIME)
LABEL_KINDS = ("binary", "time_to_event", "forecast")

# the MEDS label file: meds.LabelSchema's columns and types (tests check them against the meds package)
MEDS_LABEL_SCHEMA = pa.schema(
    [
        pa.field(SUBJECT_ID, pa.int64(), nullable=False),
        pa.field(PREDICTION_TIME, pa.timestamp("us"), nullable=False),  # timezone-naive (UTC wall time)
        pa.field(BOOLEAN_VALUE, pa.bool_(), nullable=False),
        pa.field(INTEGER_VALUE, pa.int64(), nullable=False),
        pa.field(FLOAT_VALUE, pa.float32(), nullable=False),
        pa.field(CATEGORICAL_VALUE, pa.string(), nullable=False),
    ]
)
# the sidecar ``<task>.extra.parquet``: the key, then the kind's extra columns (LABEL_EXTRAS)
LABEL_EXTRAS_SCHEMA = pa.schema(
    [
        pa.field(SUBJECT_ID, pa.int64(), nullable=False),
        pa.field(PREDICTION_TIME, pa.timestamp("us"), nullable=False),
        # time-to-event: days from prediction_time to the event or censoring (exact; the MEDS float_value
        # is float32); event 1 = event, 0 = censored
        pa.field(DURATION_DAYS, pa.float64(), nullable=False),
        pa.field(EVENT, pa.int8(), nullable=False),
        # forecast: the target codes (e.g. diagnoses at the next encounter), sorted
        pa.field(TARGET_CODES, pa.list_(pa.string()), nullable=False),
    ]
)
# per kind: the MEDS value columns of the label file (what a MEDS tool reads) ...
MEDS_LABEL_VALUES: dict[str, tuple[str, ...]] = {
    "binary": (BOOLEAN_VALUE,),  # the outcome
    "time_to_event": (BOOLEAN_VALUE, FLOAT_VALUE),  # event observed; days to event or censoring (float32)
    "forecast": (INTEGER_VALUE,),  # the number of target codes
}
# ... and the sidecar's columns after the key (none: no sidecar)
LABEL_EXTRAS: dict[str, tuple[str, ...]] = {
    "binary": (),
    "time_to_event": (DURATION_DAYS, EVENT),
    "forecast": (TARGET_CODES,),
}
# in memory: the MEDS columns (all four value columns, nullable) plus the extras. ``float_value`` stays
# float64 here (pandas consumers test NaN with ``isinstance(x, float)``, which a numpy float32 fails); the
# file's float32 widens exactly
LABELS_SCHEMA = pa.schema(
    [
        pa.field(SUBJECT_ID, pa.int64(), nullable=False),
        pa.field(PREDICTION_TIME, pa.timestamp("us"), nullable=False),
        *[f.with_nullable(True).with_type(pa.float64() if f.name == FLOAT_VALUE else f.type)
          for f in MEDS_LABEL_SCHEMA if f.name not in LABEL_KEY],
        *[f.with_nullable(True) for f in LABEL_EXTRAS_SCHEMA if f.name not in LABEL_KEY],
    ]
)

# --- token streams -------------------------------------------------------------------------------------
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[MASK]", "[CLS]", "[VS]", "[VE]", "[REG]")
PAD, UNK, MASK, CLS, VS, VE, REG = SPECIAL_TOKENS
INTERVAL_TOKENS = tuple([f"[W{i}]" for i in range(4)] + [f"[M{i}]" for i in range(13)] + ["[LT]"])
PAD_ID = 0
UNK_ID = 1


def task_token(task: str) -> str:
    """The prompt token of a task, e.g. ``[TASK:readmission_30d]``."""
    return f"[TASK:{task}]"


class TokenType:
    """Values of the ``type_ids`` stream (small ints; 0 is padding)."""

    PAD = 0
    SPECIAL = 1  # [CLS], [UNK], [MASK]
    VISIT_START = 2
    VISIT_END = 3
    REGISTER = 4
    INTERVAL = 5
    CODE = 6
    VALUE_BIN = 7
    STATIC = 8
    TASK = 9
    COUNT = 10


# The parallel list streams of a token row, in model-argument order (one definition for data, model,
# notebooks).
TOKEN_STREAMS = ("concept_ids", "type_ids", "ages", "times", "visit_orders", "visit_segments", "values")

TOKENS_SCHEMA = pa.schema(
    [
        pa.field(SUBJECT_ID, pa.int64(), nullable=False),
        pa.field("split", pa.string()),
        pa.field("task", pa.string()),  # null for pretraining rows
        pa.field(PREDICTION_TIME, pa.timestamp("us")),  # null for pretraining rows
        pa.field("length", pa.int32(), nullable=False),
        pa.field("concept_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("type_ids", pa.list_(pa.int8()), nullable=False),
        pa.field("ages", pa.list_(pa.float32()), nullable=False),  # years at the token's time
        pa.field("times", pa.list_(pa.float32()), nullable=False),  # days since 1970-01-01 (absolute)
        pa.field("visit_orders", pa.list_(pa.int32()), nullable=False),  # 0 before the first visit, then 1..
        pa.field("visit_segments", pa.list_(pa.int8()), nullable=False),  # 0 outside visits, 1/2 alternating
        # the exact numeric value on its value-bin token, scaled per code by the train bins; NaN elsewhere
        pa.field("values", pa.list_(pa.float32()), nullable=False),
        # label columns, null for pretraining rows
        pa.field("label", pa.float32()),  # binary tasks: 0/1
        pa.field("duration_days", pa.float32()),
        pa.field("event", pa.int8()),
        pa.field("target_ids", pa.list_(pa.int32())),  # forecasting: vocabulary ids of the target codes
    ]
)
