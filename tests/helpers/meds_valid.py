"""``assert_meds_valid``: a MEDS dataset folder checked by the ``meds`` package itself, not by ehrfm's code.

ehrfm has its own validator (:func:`ehrfm.ingest.validate.validate_meds_dataset`, stricter: sort order,
code coverage); this helper is the external client's view -- the file layout the MEDS standard names
(``meds.data_subdirectory``, ``meds.code_metadata_filepath``...) and the ``meds`` schemas, so a test fails
when our output stops being what MEDS tools read, whatever ehrfm's validator thinks. Label tables are
checked where they are written (tests/labels).
"""

from __future__ import annotations

import json
from pathlib import Path

import meds
import pyarrow.parquet as pq

MEDS_SPLITS = {meds.train_split, meds.tuning_split, meds.held_out_split}


def _check(schema: type, table: object, where: str) -> None:
    try:
        schema.validate(table)  # type: ignore[attr-defined]
    except Exception as e:  # flexible_schema raises several types; name the file and the schema
        raise AssertionError(f"{where}: not valid under meds.{schema.__name__}: {e}") from e


def assert_meds_valid(meds_root: str | Path) -> dict[str, int]:
    """Assert that ``meds_root`` is a MEDS dataset the ``meds`` package (0.4) accepts: every parquet file
    under ``data/`` (any depth: flat or ``data/<split>/<n>.parquet``) matches ``meds.DataSchema`` with no
    null subject_id or code, ``metadata/dataset.json`` matches ``meds.DatasetMetadataSchema``,
    ``metadata/codes.parquet`` ``meds.CodeMetadataSchema`` and ``metadata/subject_splits.parquet``
    ``meds.SubjectSplitSchema`` with MEDS split names, covering every subject in the data.

    Returns counts (files, events, subjects) for the caller's own assertions.
    """
    root = Path(meds_root)
    files = sorted((root / meds.data_subdirectory).rglob("*.parquet"))
    assert files, f"{root}: no parquet files under {meds.data_subdirectory}/"
    subjects: set[int] = set()
    events = 0
    for path in files:
        where = str(path.relative_to(root))
        table = pq.read_table(path)
        _check(meds.DataSchema, table, where)
        for col in (meds.DataSchema.subject_id_name, meds.DataSchema.code_name):
            assert table.column(col).null_count == 0, f"{where}: null values in {col}"
        subjects.update(table.column(meds.DataSchema.subject_id_name).unique().to_pylist())
        events += table.num_rows
    _check(meds.DatasetMetadataSchema, json.loads((root / meds.dataset_metadata_filepath).read_text()),
           meds.dataset_metadata_filepath)
    _check(meds.CodeMetadataSchema, pq.read_table(root / meds.code_metadata_filepath),
           meds.code_metadata_filepath)
    splits = pq.read_table(root / meds.subject_splits_filepath)
    _check(meds.SubjectSplitSchema, splits, meds.subject_splits_filepath)
    names = set(splits.column(meds.SubjectSplitSchema.split_name).to_pylist())
    assert names <= MEDS_SPLITS, f"{meds.subject_splits_filepath}: split names {sorted(names - MEDS_SPLITS)}"
    unsplit = subjects - set(splits.column(meds.SubjectSplitSchema.subject_id_name).to_pylist())
    assert not unsplit, f"{meds.subject_splits_filepath}: {len(unsplit)} subject(s) of the data have no split"
    return {"files": len(files), "events": events, "subjects": len(subjects)}
