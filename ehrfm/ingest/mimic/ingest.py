"""MIMIC-IV (hosp/ + icu/ CSV) -> MEDS dataset on Spark, driven by the rules table in rules.yaml.

Each rule turns the rows of one table into candidate events; a candidate that cannot become an event
(bad subject id, missing or unparseable time, missing code part, unknown subject, time before birth)
becomes a reject with its table, file, row index and reason instead.

One pass per table: the rules of a table become one ``inline`` of an array holding one candidate struct
per rule (a ``when`` rule contributes nothing for rows it does not apply to), so a table read by ten rules
is still scanned once. Raw tables are cached only when read a second time (admissions, by the prepare
steps of patients and diagnoses); the candidates of all tables are unioned and cached once, so the
per-rule summary, the events and the rejects all come from that one pass over the CSVs, and the writer
reads the cached candidates instead of caching the events a second time. Everything is a native Spark
expression: no Python UDF runs before the shard writer.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from functools import reduce
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from ehrfm import storage
from ehrfm.ingest.mimic.codes import code_metadata
from ehrfm.ingest.mimic.prepare import PREPARE, find_table, parse_time, read_csv, with_row_index
from ehrfm.ingest.mimic.rules import (
    EventRule,
    MimicRules,
    TableSpec,
    first_missing,
    load_rules,
    template_column,
)
from ehrfm.ingest.writer import write_meds_dataset
from ehrfm.prepare.splits import DEFAULT_RATIOS
from ehrfm.schema import EVENT_COLUMNS, SUBJECT_ID

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession



def _blank(col: Column) -> Column:
    from pyspark.sql import functions as F

    return col.isNull() | (F.trim(col) == "")


def _clean(name: str | None) -> Column:
    """Trimmed string column, null when blank or when the rule names no column."""
    from pyspark.sql import functions as F

    if not name:
        return F.lit(None).cast("string")
    v = F.trim(F.col(name).cast("string"))
    return F.when(v != "", v)


def rule_candidates(df: DataFrame, rule: EventRule, spec: TableSpec) -> DataFrame:
    """Candidate events of one rule: EVENT_COLUMNS plus ``_reason`` (null = a good event) and provenance."""
    from pyspark.sql import functions as F

    if rule.when:
        df = df.where(~_blank(F.col(rule.when)))
    return df.select(*candidate_columns(dict(df.dtypes), rule, spec))


def table_candidates(df: DataFrame, rules: Sequence[EventRule], spec: TableSpec) -> DataFrame:
    """Candidate events of every rule of one table in one scan of it (same rows as the union of
    :func:`rule_candidates` over ``rules``)."""
    from pyspark.sql import functions as F

    if len(rules) == 1:
        return rule_candidates(df, rules[0], spec)
    structs = []
    dtypes = dict(df.dtypes)
    for rule in rules:
        s = F.struct(*candidate_columns(dtypes, rule, spec))
        structs.append(F.when(~_blank(F.col(rule.when)), s) if rule.when else s)
    # null elements are the rows a `when` rule does not apply to: dropped before the inline
    return df.select(F.inline(F.filter(F.array(*structs), lambda c: c.isNotNull())))


def candidate_columns(columns: dict[str, str], rule: EventRule, spec: TableSpec) -> list[Column]:
    """The named columns of one rule's candidate (see :func:`rule_candidates`) over a table's ``columns``
    (name -> Spark type name, as ``dict(df.dtypes)``)."""
    from pyspark.sql import functions as F

    missing = sorted(c for c in rule.columns() if c not in columns)
    if missing:
        raise ValueError(f"MIMIC rule {rule.name}: table {spec.name} ({spec.path}) has no column(s)"
                         f" {missing}")
    sid = F.trim(F.col(SUBJECT_ID)).try_cast("bigint")
    time = parse_time(rule.time, rule.end_of_day) if rule.time else F.lit(None).cast("timestamp")
    code = template_column(rule.code, rule.unknown)
    gap = first_missing(rule.code, rule.unknown)
    reason = F.when(sid.isNull(), F.lit("missing or non-integer subject_id"))
    fld = F.when(sid.isNull(), F.lit(SUBJECT_ID))
    if rule.time:
        reason = reason.when(_blank(F.col(rule.time)), F.lit(f"missing time ({rule.time})"))
        unparsed = F.concat(F.lit(f"unparseable time ({rule.time}): "), F.col(rule.time))
        reason = reason.when(time.isNull(), unparsed)
        fld = fld.when(time.isNull(), F.lit(rule.time))
    reason = reason.when(gap.isNotNull(), F.concat(F.lit("missing value for code "), gap))
    fld = fld.when(gap.isNotNull(), gap)
    if not rule.numeric:
        numeric = F.lit(None).cast("float")
    elif columns[rule.numeric] == "float":  # a prepared float: float -> string -> float is the identity
        numeric = F.col(rule.numeric)
    else:
        numeric = F.col(rule.numeric).cast("string").try_cast("float")
    return [
        sid.alias(SUBJECT_ID),
        time.alias("time"),
        code.alias("code"),
        numeric.alias("numeric_value"),
        _clean(rule.text).alias("text_value"),
        _clean(rule.encounter).alias("encounter_id"),
        _clean(rule.unit).alias("unit"),
        F.lit(f"mimic:{spec.name}").alias("source"),
        F.lit(spec.name).alias("_table"),
        F.lit(rule.name).alias("_rule"),
        F.col("_row"),
        # a prepare step that makes several events of one row (omr: 120/80) numbers them in _part: the row is
        # counted once, by its first
        (F.col("_part") == 0 if "_part" in columns else F.lit(True)).alias("_first"),
        (F.col(spec.id).cast("string") if spec.id in columns
         else F.lit(None).cast("string")).alias("_rid"),
        reason.alias("_reason"),
        fld.alias("_field"),
    ]


class _Tables:
    """Lazily read, row-indexed raw tables; a table loaded a second time (by a prepare step of another
    table) is cached then, so it is still read once — a table only its own rules read is never cached."""

    def __init__(self, spark: SparkSession, root: str, rules: MimicRules) -> None:
        self.spark, self.root, self.rules = spark, root, rules
        self.frames: dict[str, DataFrame | None] = {}
        self.info: dict[str, dict[str, Any]] = {}

    def load(self, name: str) -> DataFrame | None:
        if name not in self.frames:
            spec = self.rules.tables.get(name)
            paths = [spec.path] if spec else [f"hosp/{name}", f"icu/{name}"]
            uri = next((u for u in (find_table(self.root, p) for p in paths) if u), None)
            if uri is None:
                self.frames[name] = None
                self.info[name] = {"file": None, "rows": 0, "absent": True}
            else:
                # the file is not a column: rejects get it from the table name (a narrower cache)
                df, n = with_row_index(read_csv(self.spark, uri), single_partition=uri.endswith(".gz"))
                self.frames[name] = df
                self.info[name] = {"file": uri, "rows": n}
        else:
            frame = self.frames[name]
            if frame is not None and not frame.is_cached:
                frame.persist()  # lazy: takes effect at the first action, before which every load happens
        return self.frames[name]

    def release(self) -> None:
        for df in self.frames.values():
            if df is not None and df.is_cached:
                df.unpersist()


def _file_of_table(info: dict[str, dict[str, Any]]) -> Column:
    """The source file of each candidate, looked up from its ``_table`` (one literal map, not a column)."""
    from pyspark.sql import functions as F

    pairs = [F.lit(x) for name, i in sorted(info.items()) if i.get("file") for x in (name, i["file"])]
    return F.create_map(*pairs)[F.col("_table")]


def code_descriptions(spark: SparkSession, codes: Mapping[str, str | None], root: str,
                      rules: MimicRules) -> DataFrame:
    """(code, description, parent_codes) of ``codes`` (code -> a text_value of its events) for the writer,
    from the ``descriptions`` rules and the dictionary tables under ``root`` (:mod:`.codes`)."""
    table = code_metadata(codes, root, rules)
    rows = list(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    return spark.createDataFrame(rows, "code string, description string, parent_codes array<string>")


# a release number as the last path part (``…/mimiciv/2.2``) or its tail (``mimic-iv-demo-2.2``, ``_v3.1``)
_VERSION_IN_PATH = re.compile(r"(?:^|[-_ ]|^v|[-_ ]v)(\d+\.\d+(?:\.\d+)?)$")


def version_from_path(root: str) -> str | None:
    """The MIMIC-IV release named by the last part of ``root``: a version (``…/mimiciv/2.2/``, as PhysioNet
    serves each release) or a name ending in one (``…/mimic-iv-clinical-database-demo-2.2/``, its zip);
    None otherwise. Only the last part: a version-like folder higher up names something else. The CSVs
    themselves carry no version."""
    parts = [p for p in re.split(r"[/\\]", root.split("://", 1)[-1]) if p]
    m = _VERSION_IN_PATH.search(parts[-1]) if parts else None
    return m.group(1) if m else None


def resolve_dataset_version(given: str | None, root: str) -> dict[str, str | None]:
    """``{"value", "from"}``: the version the caller gives, else the release in ``root``'s path, else None
    (the writer then writes ``unknown``); ``from`` says which, for summary.json."""
    if given:
        return {"value": given, "from": "argument"}
    found = version_from_path(root)
    return {"value": found, "from": "input path" if found else "none (written as unknown)"}


def mimic_candidates(spark: SparkSession, root: str,
                     rules: MimicRules) -> tuple[DataFrame, DataFrame, _Tables]:
    """All candidate rows of all rules (not yet checked against birth), the births, and the table cache."""
    tables = _Tables(spark, root, rules)
    if tables.load("patients") is None:
        raise FileNotFoundError(f"MIMIC input {root!r}: hosp/patients.csv(.gz) not found"
                                " (expected <root>/hosp, <root>/icu)")
    by_table: dict[str, list[EventRule]] = {}
    for rule in rules.events:
        by_table.setdefault(rule.table, []).append(rule)
    parts = []
    prepared: dict[str, DataFrame] = {}
    for name, table_rules in tqdm(by_table.items(), desc="mimic tables", unit="table", leave=False):
        spec = rules.tables[name]
        raw = tables.load(name)
        if raw is None:
            if not spec.optional:
                raise FileNotFoundError(f"MIMIC input {root!r}: required table {spec.path}.csv(.gz)"
                                        " not found")
            continue
        prepared[name] = PREPARE[spec.prepare](raw, tables.load) if spec.prepare else raw
        parts.append(table_candidates(prepared[name], table_rules, spec))
    # every part has the columns of candidate_columns in its order: a positional union (cheaper to plan)
    return reduce(lambda a, b: a.union(b), parts), births(prepared["patients"]), tables


def births(patients: DataFrame) -> DataFrame:
    """(subject_id, _birth) from the prepared patients table (same rule as the MEDS_BIRTH events)."""
    from pyspark.sql import functions as F

    return (
        patients.select(F.trim(F.col(SUBJECT_ID)).try_cast("bigint").alias(SUBJECT_ID),
                        F.col("_birth_time").alias("_birth"))
        .where(F.col(SUBJECT_ID).isNotNull() & F.col("_birth").isNotNull())
        .groupBy(SUBJECT_ID)
        .agg(F.min("_birth").alias("_birth"))
    )


def check_against_birth(candidates: DataFrame, birth: DataFrame) -> DataFrame:
    """Reject candidates of subjects absent from patients, and events timed before the subject's birth."""
    from pyspark.sql import functions as F

    df = candidates.join(F.broadcast(birth), on=SUBJECT_ID, how="left")
    ok = F.col("_reason").isNull()
    reason = (
        F.when(~ok, F.col("_reason"))
        .when(F.col("_birth").isNull(), F.lit("subject_id not in patients (or no birth)"))
        .when(F.col("time") < F.col("_birth"), F.lit("time before birth"))
    )
    fld = F.when(~ok, F.col("_field")).when(F.col("_birth").isNull(), F.lit(SUBJECT_ID)).when(
        F.col("time") < F.col("_birth"), F.lit("time")
    )
    # both from the input columns: chained withColumn calls would see the new _reason in `ok` and leave the
    # field of a birth reject null
    return df.withColumns({"_reason": reason, "_field": fld}).drop("_birth")


def rule_summary(counts: Iterable[Mapping[str, Any]], info: dict[str, dict[str, Any]],
                 rules: MimicRules) -> tuple[dict[str, str | None], dict[str, dict[str, Any]]]:
    """The codes of the events (code -> the smallest text_value of its events) and the per-rule summary
    (events, rejects per reason, the table rows that became events / were rejected, rows a ``when`` rule
    does not apply to) from ``counts``: one row per (``_table``, ``_rule``, ``_reason``, ``code``) with
    ``count``, ``rows`` (the source rows among them: a row split into several events counts once), ``last``
    (largest ``_row``) and ``text`` (smallest text_value), as either engine aggregates its candidates. Fills
    in ``info[table]["rows"]`` where the reader did not count the rows (gzip): every row reaches a rule
    without ``when``."""
    codes: dict[str, str | None] = {}
    per_rule: dict[str, dict[str, Any]] = {}
    for r in counts:
        if r["_reason"] is None:  # a code two rules mint: the smaller text of the two
            texts = [t for t in (codes.get(r["code"]), r["text"]) if t is not None]
            codes[r["code"]] = min(texts) if texts else None
        table = info[r["_table"]]
        if table.get("rows") is None:
            last = -1 if r["last"] is None else r["last"]  # row 0 is a row: never `r["last"] or -1`
            table["rows_seen"] = max(table.get("rows_seen", 0), last + 1)
        entry = per_rule.setdefault(r["_rule"], {"table": r["_table"], "events": 0, "rejects": {},
                                                 "rows_mapped": 0, "rows_rejected": 0})
        if r["_reason"] is None:
            entry["events"] += r["count"]
            entry["rows_mapped"] += r["rows"]
        else:
            entry["rejects"][r["_reason"]] = entry["rejects"].get(r["_reason"], 0) + r["count"]
            entry["rows_rejected"] += r["rows"]
    for table in info.values():
        if table.get("rows") is None and "rows_seen" in table:
            table["rows"] = table.pop("rows_seen")
    for rule in rules.events:  # reconcile: rows a `when` rule does not apply to are counted, not lost
        found = per_rule.get(rule.name)
        rows = info.get(rule.table, {}).get("rows")
        if found is not None and rule.when and rows is not None:
            found["not_applicable"] = rows - found["rows_mapped"] - found["rows_rejected"]
    return codes, per_rule


def ingest_mimic(
    spark: SparkSession,
    input_root: str,
    output: str,
    *,
    rules: MimicRules | None = None,
    split_ratios: Sequence[float] = DEFAULT_RATIOS,
    split_seed: int = 0,
    rows_per_shard: int | None = None,
    dataset_name: str = "MIMIC-IV",
    dataset_version: str | None = None,
) -> dict[str, Any]:
    """Ingest a MIMIC-IV root (``hosp/``, ``icu/``) into a MEDS dataset at ``output``; returns the summary.

    ``dataset_version`` (dataset.json): this value, else the release in the input path
    (:func:`version_from_path`), else the writer's ``unknown``; summary.json says which."""
    from pyspark.sql import functions as F

    input_root = storage.normalize(input_root)  # a file: URI as its (percent-decoded) absolute path
    rules = rules or load_rules()
    candidates, birth, tables = mimic_candidates(spark, input_root, rules)
    checked = check_against_birth(candidates, birth).persist()
    # per code too: the same pass yields the codes (and a text of each) that codes.parquet describes
    counts = (checked.groupBy("_table", "_rule", "_reason", "code")
              .agg(F.count(F.lit(1)).alias("count"), F.sum(F.col("_first").cast("long")).alias("rows"),
                   F.max("_row").alias("last"), F.min("text_value").alias("text")).collect())
    codes, per_rule = rule_summary((r.asDict() for r in counts), tables.info, rules)
    events = checked.where(F.col("_reason").isNull()).select(*EVENT_COLUMNS)
    rejects = checked.where(F.col("_reason").isNotNull()).select(
        F.regexp_replace(_file_of_table(tables.info), "^file:", "").alias("source_file"),
        F.col("_row").alias("record_index"),
        F.col("_table").alias("resource_type"),
        F.col("_rid").alias("resource_id"),
        F.col("_field").alias("field"),
        F.col("_reason").alias("reason"),
    )
    patients = tables.load("patients")
    assert patients is not None  # checked in mimic_candidates
    subject_ids = patients.select(
        F.trim(F.col(SUBJECT_ID)).try_cast("bigint").alias(SUBJECT_ID),
        F.trim(F.col(SUBJECT_ID)).alias("source_id"),
    ).where(F.col(SUBJECT_ID).isNotNull())
    version = resolve_dataset_version(dataset_version, input_root)
    summary = {"source": "mimic-iv", "input": input_root, "tables": tables.info, "rules": per_rule,
               "dataset_version": version}
    result = write_meds_dataset(
        spark,
        events,
        output,
        dataset_name=dataset_name,
        etl_name="ehrfm.ingest.mimic",
        code_descriptions=code_descriptions(spark, codes, input_root, rules),
        dataset_version=version["value"],
        rejects=rejects,
        subject_ids=subject_ids,
        summary=summary,
        split_ratios=split_ratios,
        split_seed=split_seed,
        rows_per_shard=rows_per_shard,
        cache_events=False,  # `checked` is cached: a second cache of its events would double the memory
    )
    checked.unpersist()
    tables.release()
    return result
