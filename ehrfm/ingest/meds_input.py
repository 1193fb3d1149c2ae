"""``ehrfm ingest meds``: an existing MEDS dataset, or a MEDS-like events parquet, -> this project's layout.

Accepted inputs:

- a MEDS root in either layout (``<root>/data/<split>/<n>.parquet`` as MEDS-Transforms and ehrfm write it,
  or flat ``<root>/data/*.parquet``) + optional ``<root>/metadata/codes.parquet`` and ``dataset.json``:
  descriptions and the dataset name are carried over (the input's splits are not: ehrfm assigns its own);
- a directory of parquet files (searched recursively), or one parquet file, with MEDS-like columns.

Hidden and ``_``-prefixed files and folders are skipped, as Spark and pyarrow do
(:func:`ehrfm.meds_files.data_files`).

Column mapping (options ``subject_col``, ``time_col``, ``code_col``, ``numeric_col``, ``text_col`` of
:class:`ehrfm.config.ingest.MedsIngestConfig`):
by default ``subject_id``, ``time``, ``code``; the numeric value comes from ``numeric_value`` if present, else
``value`` (as in the MIMIC-IV demo MEDS file); the text value from ``text_value`` if present. Extension
columns ``encounter_id``, ``unit`` and ``source`` pass through when present (``source`` defaults to
``meds:<file path under the searched folder>``, e.g. ``meds:train/0.parquet``). Rows without a subject id or
code become rejects with file and row index; every other row becomes exactly one event (nothing is
deduplicated), so events + rejects = input rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import reduce
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from tqdm import tqdm

from ehrfm import storage
from ehrfm.config.base import ConfigError
from ehrfm.ingest.mimic.prepare import parse_time, with_row_index
from ehrfm.ingest.writer import _fs, write_meds_dataset
from ehrfm.layout import MEDS_CODES, MEDS_DATA, MEDS_DATASET_JSON
from ehrfm.meds_files import data_files
from ehrfm.prepare.splits import DEFAULT_RATIOS

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession


def list_parquet(path: str) -> tuple[list[str], str | None, list[str]]:
    """Parquet files of the input, the MEDS root (None when the input is not a MEDS root) and each file's
    name relative to the folder searched (its file name for a single-file input)."""
    fs, p = _fs(path.rstrip("/"))
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"MEDS input not found: {path}")
    if info.type == pafs.FileType.File:
        return [path], None, [path.rstrip("/").rsplit("/", 1)[-1]]
    # local inputs as absolute paths (Spark executors run in folders of their own), URIs as given
    top = path.rstrip("/") if "://" in path else p
    root = None
    search = top
    if fs.get_file_info(f"{p}/{MEDS_DATA}").type == pafs.FileType.Directory:
        root, search = path.rstrip("/"), f"{top}/{MEDS_DATA}"
    files = data_files(search)
    if not files:
        raise FileNotFoundError(f"MEDS input {path}: no .parquet files under {search}")
    return files, root, [f[len(search) + 1:] for f in files]


def _pick(columns: Sequence[str], wanted: str | None, defaults: Sequence[str], what: str,
          required: bool) -> str | None:
    if wanted:
        if wanted not in columns:
            raise ConfigError(f"{what}_col={wanted!r}: not a column of the MEDS input (have {list(columns)})")
        return wanted
    found = next((c for c in defaults if c in columns), None)
    if found is None and required:
        raise ConfigError(f"{what}_col=None: the MEDS input has no {what} column among {list(defaults)}"
                          f" (have {list(columns)}); set {what}_col")
    return found


def parquet_footer(uri: str) -> tuple[pa.Schema, int]:
    """Arrow schema and row count of one parquet file from its footer; rejects timestamp[ns] clearly."""
    fs, path = _fs(uri)
    with fs.open_input_file(path) as fh:
        pf = pq.ParquetFile(fh)
        schema, n_rows = pf.schema_arrow, pf.metadata.num_rows
    for f in schema:
        if pa.types.is_timestamp(f.type) and f.type.unit == "ns":
            raise ValueError(
                f"MEDS input {uri}: column {f.name!r} is timestamp[ns], which Spark cannot read; MEDS uses "
                "timestamp[us] (rewrite it, e.g. pandas to_parquet(..., coerce_timestamps='us'))"
            )
    return schema, n_rows


def _events_of_file(spark: SparkSession, uri: str, cols: dict[str, str | None],
                    name: str) -> tuple[DataFrame, int]:
    """Candidate events of one parquet file (with ``_reason`` for rejects) and its row count; ``name``
    (the file's path under the input) makes the default ``source``."""
    from pyspark.sql import functions as F

    _, n_rows = parquet_footer(uri)
    df, _ = with_row_index(spark.read.parquet(storage.spark_uri(uri)))  # the file pyarrow found

    def col(key: str, typ: str) -> Column:
        name = cols[key]
        return F.col(name).try_cast(typ) if name else F.lit(None).cast(typ)

    tname = cols["time"]
    text_time = tname is not None and dict(df.dtypes)[tname] == "string"
    time_col = parse_time(tname) if text_time and tname else col("time", "timestamp")
    source = F.coalesce(col("source", "string"), F.lit(f"meds:{name}"))
    sid, code = col("subject", "bigint"), col("code", "string")
    reason = F.when(sid.isNull(), F.lit("missing or non-integer subject_id")).when(
        code.isNull() | (F.trim(code) == ""), F.lit("missing code")
    )
    fld = F.when(sid.isNull(), F.lit(cols["subject"])).when(reason.isNotNull(), F.lit(cols["code"]))
    if text_time and tname:
        unparsed = F.col(tname).isNotNull() & time_col.isNull()
        reason = reason.when(unparsed, F.concat(F.lit(f"unparseable time ({tname}): "), F.col(tname)))
        fld = fld.when(unparsed, F.lit(tname))
    out = df.select(
        sid.alias("subject_id"),
        time_col.alias("time"),
        code.alias("code"),
        col("numeric", "float").alias("numeric_value"),
        col("text", "string").alias("text_value"),
        col("encounter", "string").alias("encounter_id"),
        col("unit", "string").alias("unit"),
        source.alias("source"),
        F.lit(uri).alias("_file"),
        F.col("_row"),
        reason.alias("_reason"),
        fld.alias("_field"),
    )
    return out, n_rows


def ingest_meds(
    spark: SparkSession,
    input_path: str,
    output: str,
    *,
    subject_col: str | None = None,
    time_col: str | None = None,
    code_col: str | None = None,
    numeric_col: str | None = None,
    text_col: str | None = None,
    split_ratios: Sequence[float] = DEFAULT_RATIOS,
    split_seed: int = 0,
    rows_per_shard: int | None = None,
    dataset_name: str | None = None,
    dataset_version: str | None = None,
) -> dict[str, Any]:
    """Re-write MEDS(-like) parquet at ``input_path`` as a MEDS dataset at ``output``; returns the summary.

    From a MEDS root the code metadata (descriptions and ``parent_codes``) and the dataset.json name and
    ``dataset_version`` carry over unless given here."""
    from pyspark.sql import functions as F

    files, root, names = list_parquet(storage.normalize(input_path))  # file: URIs percent-decoded
    columns = parquet_footer(files[0])[0].names
    cols: dict[str, str | None] = {
        "subject": _pick(columns, subject_col, ["subject_id"], "subject", True),
        "time": _pick(columns, time_col, ["time"], "time", True),
        "code": _pick(columns, code_col, ["code"], "code", True),
        "numeric": _pick(columns, numeric_col, ["numeric_value", "value"], "numeric", False),
        "text": _pick(columns, text_col, ["text_value"], "text", False),
        "encounter": "encounter_id" if "encounter_id" in columns else None,
        "unit": "unit" if "unit" in columns else None,
        "source": "source" if "source" in columns else None,
    }
    parts = [_events_of_file(spark, f, cols, name)
             for f, name in tqdm(list(zip(files, names, strict=True)), desc="meds files", unit="file",
                                 leave=False)]
    n_in = sum(n for _, n in parts)
    allrows = reduce(lambda a, b: a.unionByName(b), [df for df, _ in parts])
    events = allrows.where(F.col("_reason").isNull()).drop("_file", "_row", "_reason", "_field")
    rejects = allrows.where(F.col("_reason").isNotNull()).select(
        F.col("_file").alias("source_file"),
        F.col("_row").alias("record_index"),
        F.lit("meds").alias("resource_type"),
        F.lit(None).cast("string").alias("resource_id"),
        F.col("_field").alias("field"),
        F.col("_reason").alias("reason"),
    )
    descriptions = None
    name, version = dataset_name, dataset_version
    if root is not None:
        fs, p = _fs(root)
        if fs.get_file_info(f"{p}/{MEDS_CODES}").type == pafs.FileType.File:
            codes = spark.read.parquet(storage.spark_uri(f"{root}/{MEDS_CODES}"))
            keep = [c for c in ("code", "description", "parent_codes") if c in codes.columns]
            descriptions = codes.select(*keep)
        if fs.get_file_info(f"{p}/{MEDS_DATASET_JSON}").type == pafs.FileType.File:
            with fs.open_input_stream(f"{p}/{MEDS_DATASET_JSON}") as fh:
                meta = json.loads(fh.read().decode())
            name = name or meta.get("dataset_name")
            version = version or meta.get("dataset_version")
    summary = {"source": "meds", "input": input_path, "files": len(files), "rows_in": n_in, "columns": cols}
    result = write_meds_dataset(
        spark,
        events,
        output,
        dataset_name=name or input_path.rstrip("/").rsplit("/", 1)[-1],
        etl_name="ehrfm.ingest.meds_input",
        code_descriptions=descriptions,
        dataset_version=version,
        rejects=rejects,
        summary=summary,
        split_ratios=split_ratios,
        split_seed=split_seed,
        rows_per_shard=rows_per_shard,
    )
    if result["events"] + result["rejects"] != n_in:
        raise RuntimeError(f"MEDS input: {n_in} rows in but {result['events']} events"
                           f" + {result['rejects']} rejects")
    return result

