"""Schemas and constants shared by every stage (pyarrow only: no Spark, no torch).

Contracts (see DESIGN.md):
- Events: MEDS 0.4 columns plus extension columns ``encounter_id``, ``unit``, ``source``.
- Rejects: one row per input record that could not become events, with where it came from and why.
- Labels: MEDS LabelSchema (``subject_id``, ``prediction_time``, one value column) plus TTE columns.
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

# --- labels (MEDS LabelSchema + time-to-event columns) -------------------------------------------------
PREDICTION_TIME = "prediction_time"
LABELS_SCHEMA = pa.schema(
    [
        pa.field(SUBJECT_ID, pa.int64(), nullable=False),
        pa.field(PREDICTION_TIME, pa.timestamp("us"), nullable=False),
        pa.field("boolean_value", pa.bool_()),
        pa.field("integer_value", pa.int64()),
        pa.field("float_value", pa.float64()),
        pa.field("categorical_value", pa.string()),
        # time-to-event tasks: days from prediction_time to the event or censoring; event 1 = event, 0 =
        # censored
        pa.field("duration_days", pa.float64()),
        pa.field("event", pa.int8()),
        # forecasting tasks: the target codes (e.g. diagnoses at the next encounter)
        pa.field("target_codes", pa.list_(pa.string())),
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
