"""Batch scoring with Spark: a registered model over a population, predictions in the evaluation contract.

Three inputs, one prediction function (:meth:`ehrfm.serve.core.Scorer.predict_rows`, i.e.
:func:`ehrfm.train.predict.predict_batch`, shared with ``ehrfm finetune`` predictions and the server):

- ``tokens``: the task rows of ``<tokens>/tasks/<task>/*.parquet`` (already cut at their prediction_time)
  scored with ``mapInPandas``;
- ``meds``: MEDS events grouped per subject (``applyInPandas``) and scored at ``prediction_time`` (one
  fixed time for everyone, or each subject's last event, as the server does) through the same
  :meth:`Scorer.score_events` the pyfunc calls;
- ``fhir``: FHIR Bundle files (``*.json``, ``*.json.gz``, one patient each; read with Spark's
  ``binaryFile``), one request row per file through :func:`ehrfm.serve.pyfunc.predict_frame`, the function
  the server answers with, so partial records, limits and errors are the server's. A file that cannot be
  scored does not fail the job: it becomes a reject row (file, status, message).

Inputs and outputs are local folders or Hadoop-compatible URIs, read and written by Spark only (through
:func:`ehrfm.storage.spark_uri`); nothing proportional to rows reaches the driver (the write summary is a
Spark aggregate, a MEDS folder's splits are joined in Spark). The serving folder (the model, not patient
data) is shipped to the executors as one zip file with ``SparkContext.addFile`` (any master) and loaded once
per Python worker. Output: parquet in the contract of :mod:`ehrfm.evaluate` (subject_id, prediction_time,
task, split, model, prob, risk, survival, times_days, topk_codes, topk_probs); FHIR scoring adds
:data:`FHIR_EXTRA_COLUMNS` (the evaluation ignores extra columns).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pandas as pd

from ehrfm import storage
from ehrfm.layout import MEDS_SUBJECT_SPLITS, TOKENS_TASKS
from ehrfm.schema import PREDICTION_TIME, SUBJECT_ID
from ehrfm.serve.core import Scorer
from ehrfm.serve.fhir_io import InputError
from ehrfm.serve.locate import local_serving_dir as local_serving_dir  # re-exported
from ehrfm.serve.pyfunc import predict_frame

if TYPE_CHECKING:
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import SparkSession

CONTRACT_DDL = ("subject_id long, prediction_time timestamp, task string, split string, model string, prob "
                "double, risk double, survival array<double>, times_days array<double>, topk_codes "
                "array<string>, topk_probs array<double>")
CONTRACT_COLUMNS = [c.split()[0] for c in CONTRACT_DDL.split(", ")]
FHIR_EXTRA_DDL = "patient_id string, partial boolean, issues string, file string"
FHIR_EXTRA_COLUMNS = [c.split()[0] for c in FHIR_EXTRA_DDL.split(", ")]
REJECTS_DDL = "file string, status int, message string"
REJECT_COLUMNS = [c.split()[0] for c in REJECTS_DDL.split(", ")]
# one mapInPandas pass yields predictions and rejects together: a reject row has ``status`` set
_FHIR_DDL = f"{CONTRACT_DDL}, {FHIR_EXTRA_DDL}, status int, message string"
BUNDLE_GLOB = "*.{json,json.gz}"
_SCORERS: dict[str, Scorer] = {}


def _scorer(path: str) -> Scorer:
    """One :class:`Scorer` per Python worker process and folder (torch model loads are the slow part)."""
    if path not in _SCORERS:
        import torch

        torch.set_num_threads(1)  # one task per core: Spark already runs one worker per core
        _SCORERS[path] = Scorer(path)
    return _SCORERS[path]


def _shipped(spark: SparkSession, folder: Path) -> Callable[[], str]:
    """Ship ``folder`` to every executor; returns a function giving its local path there.

    Spark ships single files to any master but refuses local directories on a non-local one
    (``UNSUPPORTED_ADD_FILE.LOCAL_DIRECTORY``), so the folder travels as one zip file, named after its
    content (SparkFiles are keyed by base name and refuse a second, different file of the same name), and
    each executor unpacks it once into its own SparkFiles directory (temp folder + rename: concurrent Python
    workers of one executor never see a half-unpacked model).
    """
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    for f in files:
        digest.update(str(f.relative_to(folder)).encode())
        digest.update(f.read_bytes())
    name = f"ehrfm-serving-{digest.hexdigest()[:16]}"
    archive = Path(tempfile.gettempdir()) / f"{name}.zip"
    if not archive.exists():
        tmp = archive.with_name(f".{archive.name}.{os.getpid()}")
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
            for f in files:
                zf.write(f, str(f.relative_to(folder)))
        os.replace(tmp, archive)
    spark.sparkContext.addFile(str(archive))

    def where() -> str:
        from pyspark import SparkFiles

        target = Path(SparkFiles.getRootDirectory()) / name
        if not target.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
            with zipfile.ZipFile(SparkFiles.get(archive.name)) as zf:
                zf.extractall(tmp)
            try:
                os.rename(tmp, target)
            except OSError:  # another worker of this executor unpacked it first
                shutil.rmtree(tmp, ignore_errors=True)
        return str(target)

    return where


def _contract(rows: list[dict[str, Any]], model_name: str,
              extra: Sequence[str] = ()) -> pd.DataFrame:
    columns = [*CONTRACT_COLUMNS, *extra]
    frame = pd.DataFrame(rows)
    for c in columns:
        if c not in frame:
            frame[c] = None
    frame["model"] = model_name
    # naive UTC (the contract); served rows carry "+00:00", which this normalises
    frame[PREDICTION_TIME] = pd.to_datetime(frame[PREDICTION_TIME], utc=True).dt.tz_localize(None)
    # FHIR reject rows (no patient) share the frame: nullable then
    frame[SUBJECT_ID] = frame[SUBJECT_ID].astype("Int64" if frame[SUBJECT_ID].isna().any() else "int64")
    for c in ("prob", "risk"):
        frame[c] = frame[c].astype("float64")
    # rows of other kinds hold NaN: null lists
    for c in ("survival", "times_days", "topk_codes", "topk_probs"):
        frame[c] = pd.Series([v if isinstance(v, (list, tuple)) else None for v in frame[c]],
                             index=frame.index,
                             dtype=object)
    return frame[columns]


def score_tokens(spark: SparkSession, folder: Path, tokens_dir: str | Path,
                 tasks: Sequence[str] | None = None,
                 splits: Sequence[str] | None = None) -> SparkDataFrame:
    """Contract rows for the task rows of ``tokens_dir`` (tasks: the model's, filtered by ``tasks``)."""
    from pyspark.sql import functions as F

    local = Scorer(folder)
    base = storage.normalize(str(tokens_dir))

    def task_dir(t: str) -> str:
        return storage.join(base, TOKENS_TASKS, t)

    names = list(tasks) if tasks else [t for t in local.tasks if storage.is_dir(task_dir(t))]
    if not names:
        raise FileNotFoundError(f"--tokens {tokens_dir}: no tasks/<task>/ folder for the model's tasks "
                                f"{local.tasks}")
    where, model_name = _shipped(spark, folder), local.fm.model_name
    cols = [SUBJECT_ID, "split", "task", PREDICTION_TIME, "length", "concept_ids", "type_ids", "ages",
            "times",
            "visit_orders", "visit_segments", "values"]
    frames = []
    for t in names:
        local.spec(t)
        df = spark.read.parquet(storage.spark_uri(task_dir(t))).select(*cols)
        frames.append(df.filter(F.col("split").isin(list(splits))) if splits else df)
    rows = frames[0]
    for f in frames[1:]:
        rows = rows.unionByName(f)

    def fn(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scorer = _scorer(where())
        for pdf in batches:
            out: list[dict[str, Any]] = []
            for task, grp in pdf.groupby("task", sort=False):
                recs = cast(list[dict[str, Any]], grp.to_dict("records"))
                for rec, res in zip(recs, scorer.predict_rows(str(task), recs), strict=True):
                    out.append({SUBJECT_ID: rec[SUBJECT_ID], PREDICTION_TIME: rec[PREDICTION_TIME],
                                "task": task,
                                "split": rec["split"], **res})
            if out:
                yield _contract(out, model_name)

    return rows.mapInPandas(fn, CONTRACT_DDL)


def score_meds(spark: SparkSession, folder: Path, meds_dir: str | Path, prediction_time: str | None = None,
               tasks: Sequence[str] | None = None) -> SparkDataFrame:
    """Contract rows for every subject of ``<meds>/data`` at ``prediction_time`` (None: last event); ``split``
    from ``metadata/subject_splits.parquet`` when present (a Spark join: no per-subject table on the driver or
    in the tasks' closures; a subject listed twice takes the smallest split name), else null."""
    from pyspark.sql import functions as F

    from ehrfm.tokenize.spark_job import read_events_spark

    local = Scorer(folder)
    names = list(tasks) if tasks else local.tasks
    for t in names:
        local.spec(t)
    where, model_name = _shipped(spark, folder), local.fm.model_name
    pt = pd.Timestamp(prediction_time) if prediction_time else None
    base = storage.normalize(str(meds_dir))
    events = read_events_spark(spark, base)

    def fn(pdf: pd.DataFrame) -> pd.DataFrame:
        scorer = _scorer(where())
        return _contract(scorer.score_events(pdf, pt, names), model_name)

    scored = events.groupBy(SUBJECT_ID).applyInPandas(fn, CONTRACT_DDL)
    splits_path = storage.join(base, MEDS_SUBJECT_SPLITS)
    if not storage.exists(splits_path):
        return scored
    splits = (spark.read.parquet(storage.spark_uri(splits_path))
              .select(F.col(SUBJECT_ID).cast("long").alias(SUBJECT_ID), F.col("split").cast("string"))
              .groupBy(SUBJECT_ID).agg(F.min("split").alias("split")))
    return scored.drop("split").join(splits, SUBJECT_ID, "left").select(*CONTRACT_COLUMNS)


def bundle_bytes(content: bytes, max_bytes: int) -> bytes:
    """A Bundle file's JSON bytes, gunzipped when gzip (``.json.gz``); decompression stops past
    ``max_bytes`` (the serving row limit) so a gzip bomb costs no more memory than a plain file."""
    if content[:2] != b"\x1f\x8b":
        return content
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(content, max_bytes + 1)
    except zlib.error:
        raise InputError("row 0: field 'bundle': the file is not valid gzip", 400) from None
    if len(out) > max_bytes:
        raise InputError(f"row 0: field 'bundle' is over {max_bytes:,} bytes once decompressed, over the "
                         f"limit max_request_bytes={max_bytes:,}", 413)
    return out


def score_bundle_file(scorer: Scorer, path: str, content: bytes, prediction_time: str | None = None,
                      tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """One Bundle file -> its rows of :data:`OUTPUT_COLUMNS` (via :func:`predict_frame`, one request row)
    plus ``file``; an :class:`InputError` is raised as for a served request."""
    text = bundle_bytes(content, scorer.config.limits.max_request_bytes)
    request = {"bundle": text, "prediction_time": prediction_time,
               "tasks": ",".join(tasks) if tasks else None}
    return predict_frame(scorer, [request]).assign(file=path)


def score_fhir(spark: SparkSession, folder: Path, input_dir: str | Path, prediction_time: str | None = None,
               tasks: Sequence[str] | None = None) -> SparkDataFrame:
    """Predictions and rejects for every Bundle file under ``input_dir`` (recursive), in one frame: split it
    with :func:`fhir_predictions` and :func:`fhir_rejects` (persist it first; each is one pass)."""
    local = Scorer(folder)
    for t in tasks or []:
        local.spec(t)  # an unknown task fails the job now, not every file
    where, model_name = _shipped(spark, folder), local.fm.model_name
    files = (spark.read.format("binaryFile").option("recursiveFileLookup", "true")
             .option("pathGlobFilter", BUNDLE_GLOB).load(storage.spark_uri(storage.normalize(str(input_dir))))
             .select("path", "content"))

    def fn(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        scorer = _scorer(where())
        for pdf in batches:
            preds, rejects = [], []
            for path, content in zip(pdf["path"], pdf["content"], strict=True):
                try:
                    preds.append(score_bundle_file(scorer, str(path), bytes(content), prediction_time, tasks))
                except InputError as e:
                    rejects.append({"file": str(path), "status": e.status, "message": str(e)})
            rows = [cast(dict[str, Any], r) for f in preds for r in f.to_dict("records")] + rejects
            if rows:
                frame = _contract(rows, model_name, [*FHIR_EXTRA_COLUMNS, "status", "message"])
                yield frame.assign(status=frame["status"].astype("Int32"))

    return files.mapInPandas(fn, _FHIR_DDL)


def fhir_predictions(df: SparkDataFrame) -> SparkDataFrame:
    """The prediction rows of :func:`score_fhir` (contract + :data:`FHIR_EXTRA_COLUMNS`)."""
    return df.filter(df["status"].isNull()).select(*CONTRACT_COLUMNS, *FHIR_EXTRA_COLUMNS)


def fhir_rejects(df: SparkDataFrame) -> SparkDataFrame:
    """The files :func:`score_fhir` could not score: (file, status, message)."""
    return df.filter(df["status"].isNotNull()).select(*REJECT_COLUMNS)


def write_predictions(df: SparkDataFrame, output: str | Path) -> pd.DataFrame:
    """Write ``df`` as parquet to ``output`` (a local path or URI; overwrite) and return per-task counts
    (rows, subjects, mean scores): a Spark aggregate over the written files, one small row per task to the
    driver."""
    from pyspark.sql import functions as F

    target = storage.spark_uri(storage.normalize(str(output)))
    df.write.mode("overwrite").parquet(target)
    back = df.sparkSession.read.parquet(target)
    summary = back.groupBy("task").agg(F.count("*").alias("rows"),
                                       F.countDistinct(SUBJECT_ID).alias("subjects"),
                                       F.mean("prob").alias("mean_prob"), F.mean("risk").alias("mean_risk"))
    return summary.orderBy("task").toPandas()
