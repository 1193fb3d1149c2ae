"""Validate a MEDS dataset on disk: schemas (with the ``meds`` package), shard invariants, metadata coverage.

Runs on the driver with pyarrow only, one shard at a time (memory: one shard), so it also works in a
notebook without Spark.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from meds.schema import CodeMetadataSchema, DataSchema, DatasetMetadataSchema, SubjectSplitSchema

from ehrfm.ingest.writer import _fs, check_sorted_table
from ehrfm.layout import MEDS_CODES, MEDS_DATA, MEDS_DATASET_JSON, MEDS_SUBJECT_SPLITS
from ehrfm.schema import CODE, SUBJECT_ID


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


def validate_meds_dataset(path: str) -> ValidationReport:
    """Check a MEDS dataset directory (local path or URI) and return a :class:`ValidationReport`.

    Checks: every ``data/*.parquet`` matches ``meds.DataSchema`` (types included); a subject never spans
    two files; inside a file a subject's rows are contiguous and sorted by time (static rows first), then
    code; ``metadata/codes.parquet`` matches ``meds.CodeMetadataSchema`` and covers every code in data;
    ``metadata/subject_splits.parquet`` matches ``meds.SubjectSplitSchema`` and covers every subject;
    ``metadata/dataset.json`` matches ``meds.DatasetMetadataSchema``. Raises :class:`MedsValidationError`.
    """
    fs, base = _fs(path.rstrip("/"))
    report = ValidationReport(path=path)
    infos = fs.get_file_info(pafs.FileSelector(f"{base}/{MEDS_DATA}", allow_not_found=True, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(".parquet"))
    if not files:
        raise MedsValidationError(f"{path}: no data/*.parquet shards")
    subject_file: dict[int, str] = {}
    codes: set[str] = set()
    for f in files:
        name = f[len(base) + 1 :]
        table = pq.read_table(f, filesystem=fs)
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

    with fs.open_input_stream(f"{base}/{MEDS_DATASET_JSON}") as fh:
        meta = json.loads(fh.read().decode())
    try:
        DatasetMetadataSchema.validate(meta)
    except Exception as e:
        raise MedsValidationError(f"{MEDS_DATASET_JSON}: {e}") from e
    return report
