"""Validate a MEDS dataset on disk: schemas (with the ``meds`` package), shard invariants, metadata coverage.

Runs on the driver with pyarrow only, one shard at a time (memory: one shard), so it also works in a
notebook without Spark.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from meds.schema import CodeMetadataSchema, DataSchema, DatasetMetadataSchema, SubjectSplitSchema

from ehrfm.ingest.writer import _fs, check_sorted_table
from ehrfm.layout import MEDS_CODES, MEDS_DATA, MEDS_DATASET_JSON, MEDS_SUBJECT_SPLITS
from ehrfm.meds_files import meds_data_files
from ehrfm.schema import CODE, SPLITS, SUBJECT_ID


class MedsValidationError(ValueError):
    """A MEDS dataset on disk breaks the format; the message names the file (and row where known)."""


@dataclass
class ValidationReport:
    """What :func:`validate_meds_dataset` checked and counted."""

    path: str
    files: list[str] = field(default_factory=list)
    events: int = 0
    subjects: int = 0
    codes_in_data: int = 0
    codes_in_metadata: int = 0
    static_events: int = 0
    splits: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form (for JSON)."""
        return asdict(self)


def _validate_schema(schema_cls: Any, table: pa.Table, where: str) -> None:
    try:
        schema_cls.validate(table)
    except Exception as e:  # flexible_schema raises several exception types; re-raise with the file name
        raise MedsValidationError(f"{where}: does not match meds.{schema_cls.__name__}: {e}") from e


def _check_split_folders(subject_file: dict[int, str], split_of: dict[int, str]) -> None:
    """A subject whose file lies in a split folder (``data/<split>/…``) has that split in the subject splits;
    files of the flat layout, or in folders not named after a split, are not checked."""
    for sid, name in subject_file.items():
        parts = name.split("/")
        folder = parts[1] if len(parts) > 2 else None
        if folder in SPLITS and split_of.get(sid) != folder:
            raise MedsValidationError(f"{name}: subject_id={sid} is in the {folder!r} folder but "
                                      f"{MEDS_SUBJECT_SPLITS} gives split {split_of.get(sid)!r}")


def validate_meds_dataset(path: str) -> ValidationReport:
    """Check a MEDS dataset directory (local path or URI) and return a :class:`ValidationReport`.

    Checks: every event file (``data/<split>/<n>.parquet`` or flat ``data/*.parquet``) matches
    ``meds.DataSchema`` (types included); a subject never spans two files; inside a file a subject's rows
    are contiguous and sorted by time (static rows first), then code; ``metadata/codes.parquet`` matches
    ``meds.CodeMetadataSchema`` and covers every code in data; ``metadata/subject_splits.parquet`` matches
    ``meds.SubjectSplitSchema``, covers every subject and agrees with the split folder each subject's file
    is in; ``metadata/dataset.json`` matches ``meds.DatasetMetadataSchema``. Raises
    :class:`MedsValidationError`.
    """
    fs, base = _fs(path.rstrip("/"))
    report = ValidationReport(path=path)
    prefix = f"{path.rstrip('/')}/{MEDS_DATA}/"
    rels = [f[len(prefix):] for f in meds_data_files(path)]
    if not rels:
        raise MedsValidationError(f"{path}: no event files ({MEDS_DATA}/<split>/<n>.parquet or "
                                  f"{MEDS_DATA}/*.parquet)")
    subject_file: dict[int, str] = {}
    codes: set[str] = set()
    for rel in rels:
        name = f"{MEDS_DATA}/{rel}"
        table = pq.read_table(f"{base}/{name}", filesystem=fs)
        _validate_schema(DataSchema, table, name)
        for col in (SUBJECT_ID, CODE):
            nulls = table.column(col).null_count
            if nulls:
                raise MedsValidationError(f"{name}: {nulls} null value(s) in required column {col!r}")
        try:
            report.subjects += check_sorted_table(table, name)
        except ValueError as e:
            raise MedsValidationError(str(e)) from e
        for sid in set(table.column(SUBJECT_ID).to_pylist()):
            if sid in subject_file:
                raise MedsValidationError(f"subject_id={sid} spans two files: {subject_file[sid]} and {name}")
            subject_file[sid] = name
        codes.update(table.column(CODE).unique().to_pylist())
        report.events += table.num_rows
        report.static_events += table.column("time").null_count
        report.files.append(name)
    report.codes_in_data = len(codes)

    codes_path = f"{base}/{MEDS_CODES}"
    code_table = pq.read_table(codes_path, filesystem=fs)
    _validate_schema(CodeMetadataSchema, code_table, MEDS_CODES)
    meta_codes = set(code_table.column(CODE).to_pylist())
    report.codes_in_metadata = len(meta_codes)
    missing = sorted(codes - meta_codes)
    if missing:
        raise MedsValidationError(f"{MEDS_CODES}: {len(missing)} code(s) in data are"
                                  f" missing, e.g. {missing[:5]}")

    split_table = pq.read_table(f"{base}/{MEDS_SUBJECT_SPLITS}", filesystem=fs)
    _validate_schema(SubjectSplitSchema, split_table, MEDS_SUBJECT_SPLITS)
    split_ids = split_table.column(SUBJECT_ID).to_pylist()
    if len(set(split_ids)) != len(split_ids):
        raise MedsValidationError(f"{MEDS_SUBJECT_SPLITS}: a subject_id appears more than once")
    unsplit = set(subject_file) - set(split_ids)
    if unsplit:
        raise MedsValidationError(f"{MEDS_SUBJECT_SPLITS}: {len(unsplit)} subject(s) without a"
                                  f" split, e.g. {sorted(unsplit)[:5]}")
    for s in split_table.column("split").to_pylist():
        report.splits[s] = report.splits.get(s, 0) + 1
    _check_split_folders(subject_file, dict(zip(split_ids, split_table.column("split").to_pylist(),
                                                strict=True)))

    with fs.open_input_stream(f"{base}/{MEDS_DATASET_JSON}") as fh:
        meta = json.loads(fh.read().decode())
    try:
        DatasetMetadataSchema.validate(meta)
    except Exception as e:
        raise MedsValidationError(f"{MEDS_DATASET_JSON}: {e}") from e
    return report
