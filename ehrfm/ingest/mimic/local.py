"""MIMIC-IV (hosp/ + icu/ CSV) -> MEDS dataset on one machine: the polars interpreter of rules.yaml.

The second interpreter of the one rules table (the first is the Spark one in :mod:`.ingest`): the same
rules, prepare steps, reasons, rejects, per-rule counts, code descriptions and writer checks, as polars
lazy queries instead of Spark expressions; tests/ingest/test_mimic_local.py runs the MIMIC-IV demo through
both and requires identical outputs. No JVM starts, so on one machine the fixed cost of Spark is gone.

One scan per table, of the columns its rules and prepare step read only; what several rules of a table
share (subject id, parsed times) is computed once, and a table several rules read is read once. A table
that a prepare step of another table reads (admissions) is read once and kept. Each table's candidates are
checked against the births and split into events, rejects and per-rule counts as soon as they are read, so
memory holds the events, not the raw tables.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import polars as pl

from ehrfm import storage
from ehrfm.ingest.mimic.codes import code_metadata
from ehrfm.ingest.mimic.ingest import resolve_dataset_version, rule_summary
from ehrfm.ingest.mimic.prepare import csv_header, find_table
from ehrfm.ingest.mimic.rules import (
    PLACEHOLDER,
    UNKNOWN,
    EventRule,
    MimicRules,
    TableSpec,
    load_rules,
    template_columns,
)
from ehrfm.prepare.splits import DEFAULT_RATIOS
from ehrfm.schema import EVENT_COLUMNS, SUBJECT_ID

# polars is imported at module level: this module is itself imported only when the local engine runs
LocalLoader = Callable[[str], pl.DataFrame | None]
# the Spark formats of prepare.TIME_FORMATS in chrono syntax (Spark's SSSSSS reads 1 to 6 digits)
TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%d")
_DAY_END_S = 86_399  # 23:59:59
# source columns each prepare step reads besides the rules' own (so a scan reads no other column)
PREPARE_COLUMNS: dict[str, tuple[str, ...]] = {
    "patients": ("anchor_year", "anchor_age", "dod"),
    "at_discharge": ("hadm_id",),
    "value_or_text": ("valuenum", "value"),
    "prescriptions": ("ndc", "drug"),
    "omr": ("result_value", "result_name"),
}


def _trim(e: pl.Expr) -> pl.Expr:
    """Spark's ``trim``: spaces only (not tabs or newlines)."""
    return e.cast(pl.String).str.strip_chars(" ")


def _blank(e: pl.Expr) -> pl.Expr:
    return e.is_null() | (_trim(e) == "")


def _clean(name: str | None) -> pl.Expr:
    """Trimmed string column, null when blank or when the rule names no column (Spark: ``_clean``)."""
    if not name:
        return pl.lit(None, dtype=pl.String)
    v = _trim(pl.col(name))
    return pl.when(v != "").then(v)


def _to_int(e: pl.Expr) -> pl.Expr:
    """Spark's ``trim(x).try_cast('bigint')``: the cast trims any whitespace, and a decimal is not an int."""
    return e.cast(pl.String).str.strip_chars().cast(pl.Int64, strict=False)


def _to_float(e: pl.Expr) -> pl.Expr:
    """Spark's ``try_cast('float')`` of a string (which trims whitespace first)."""
    return e.cast(pl.String).str.strip_chars().cast(pl.Float32, strict=False)


def parse_time_local(e: pl.Expr, end_of_day: bool = False) -> pl.Expr:
    """:func:`ehrfm.ingest.mimic.prepare.parse_time` in polars: the first of TIME_FORMATS that parses the
    trimmed string (null when none); ``end_of_day`` moves date-only values to 23:59:59."""
    c = _trim(e)
    ts = pl.coalesce([c.str.strptime(pl.Datetime("us"), f, strict=False) for f in TIME_FORMATS])
    if end_of_day:
        ts = pl.when(c.str.len_chars() == 10).then(ts + pl.duration(seconds=_DAY_END_S)).otherwise(ts)
    return ts


def template_expr(template: str, unknown: tuple[str, ...] = (), fallback: str = UNKNOWN) -> pl.Expr:
    """:func:`ehrfm.ingest.mimic.rules.template_column` in polars: null when a required part is blank."""
    parts: list[pl.Expr] = []
    pos = 0
    for m in PLACEHOLDER.finditer(template):
        if m.start() > pos:
            parts.append(pl.lit(template[pos : m.start()]))
        value = _trim(pl.col(m.group(1)))
        value = pl.when(value != "").then(value)
        parts.append(pl.coalesce([value, pl.lit(fallback)]) if m.group(1) in unknown else value)
        pos = m.end()
    if pos < len(template):
        parts.append(pl.lit(template[pos:]))
    return pl.concat_str(parts) if parts else pl.lit(template)  # null when any part is null


def first_missing_expr(template: str, unknown: tuple[str, ...] = ()) -> pl.Expr:
    """:func:`ehrfm.ingest.mimic.rules.first_missing` in polars."""
    cases: Any = None
    for col in template_columns(template):
        if col in unknown:
            continue
        cond = _blank(pl.col(col))
        cases = pl.when(cond).then(pl.lit(col)) if cases is None else cases.when(cond).then(pl.lit(col))
    return cases.otherwise(None) if cases is not None else pl.lit(None, dtype=pl.String)


def _time_key(column: str, end_of_day: bool) -> str:
    """The name of a table's parsed time column (one per source column and ``end_of_day``)."""
    return f"__t:{column}:{int(end_of_day)}"


def shared_columns(schema: dict[str, Any], rules: Sequence[EventRule], spec: TableSpec) -> list[pl.Expr]:
    """What several rules of a table read, computed once per row (not once per rule): the subject id, each
    parsed time column and whether it is blank. Checks that every rule finds its columns."""
    for rule in rules:
        missing = sorted(c for c in rule.columns() if c not in schema)
        if missing:
            raise ValueError(f"MIMIC rule {rule.name}: table {spec.name} ({spec.path}) has no column(s)"
                             f" {missing}")
    out = [_to_int(pl.col(SUBJECT_ID)).alias("__sid")]
    for col, eod in dict.fromkeys((r.time, r.end_of_day) for r in rules if r.time):
        assert col is not None
        # a prepared time (birth) is a timestamp already: Spark's string round trip leaves it unchanged
        parsed = pl.col(col) if schema[col] == pl.Datetime("us") else parse_time_local(pl.col(col), eod)
        out.append(parsed.alias(_time_key(col, eod)))
    out += [_blank(pl.col(c)).alias(f"__tb:{c}") for c in dict.fromkeys(r.time for r in rules if r.time)]
    return out


def candidate_exprs(schema: dict[str, Any], rule: EventRule, spec: TableSpec) -> list[pl.Expr]:
    """The candidate columns of one rule over a table with the :func:`shared_columns` added (``schema``:
    name -> polars type of the prepared table): the twin of
    :func:`ehrfm.ingest.mimic.ingest.candidate_columns`, same names, reasons and fields. ``_reason`` and
    ``_field`` come from :func:`reason_exprs` over these columns (``__gap``, ``__tnull``, ``__traw``)."""
    time = (pl.col(_time_key(rule.time, rule.end_of_day)) if rule.time
            else pl.lit(None, dtype=pl.Datetime("us")))
    if not rule.numeric:
        numeric = pl.lit(None, dtype=pl.Float32)
    elif schema[rule.numeric] == pl.Float32:  # a prepared float
        numeric = pl.col(rule.numeric)
    else:
        numeric = _to_float(pl.col(rule.numeric))
    rid = pl.col(spec.id).cast(pl.String) if spec.id in schema else pl.lit(None, dtype=pl.String)
    if rule.time:
        extra = [pl.col(f"__tb:{rule.time}").alias("__tblank"),
                 pl.col(rule.time).cast(pl.String).alias("__traw")]
    else:
        extra = [pl.lit(False).alias("__tblank"), pl.lit(None, dtype=pl.String).alias("__traw")]
    return [
        pl.col("__sid").alias(SUBJECT_ID),
        time.alias("time"),
        template_expr(rule.code, rule.unknown).alias("code"),
        numeric.alias("numeric_value"),
        _clean(rule.text).alias("text_value"),
        _clean(rule.encounter).alias("encounter_id"),
        _clean(rule.unit).alias("unit"),
        pl.lit(f"mimic:{spec.name}").alias("source"),
        pl.lit(spec.name).alias("_table"),
        pl.lit(rule.name).alias("_rule"),
        pl.col("_row"),
        (pl.col("_part") == 0 if "_part" in schema else pl.lit(True)).alias("_first"),
        rid.alias("_rid"),
        first_missing_expr(rule.code, rule.unknown).alias("__gap"),
        *extra,
    ]


def reason_exprs(rule: EventRule) -> list[pl.Expr]:
    """``_reason`` and ``_field`` of one rule's candidates, in the Spark interpreter's order of checks:
    subject id, then time (blank, unparseable), then a blank code part."""
    sid_bad = pl.col(SUBJECT_ID).is_null()
    gap = pl.col("__gap")
    reason: Any = pl.when(sid_bad).then(pl.lit("missing or non-integer subject_id"))
    fld: Any = pl.when(sid_bad).then(pl.lit(SUBJECT_ID))
    if rule.time:
        reason = reason.when(pl.col("__tblank")).then(pl.lit(f"missing time ({rule.time})"))
        unparsed = pl.concat_str([pl.lit(f"unparseable time ({rule.time}): "), pl.col("__traw")])
        reason = reason.when(pl.col("time").is_null()).then(unparsed)
        fld = fld.when(pl.col("time").is_null()).then(pl.lit(rule.time))
    reason = reason.when(gap.is_not_null()).then(pl.concat_str([pl.lit("missing value for code "), gap]))
    fld = fld.when(gap.is_not_null()).then(gap)
    return [reason.otherwise(None).alias("_reason"), fld.otherwise(None).alias("_field")]


def table_candidates_local(lf: pl.LazyFrame, rules: Sequence[EventRule], spec: TableSpec) -> pl.LazyFrame:
    """Candidates of every rule of one table. What the rules share (:func:`shared_columns`) is computed
    once; a table read by several rules is read once (collected, then each rule selects from it); a ``when``
    rule keeps only the rows where its column is not blank."""
    schema = dict(lf.collect_schema())
    base = lf.with_columns(shared_columns(schema, rules, spec))
    if len(rules) > 1:
        base = base.collect().lazy()
    parts = []
    for rule in rules:
        src = base.filter(~_blank(pl.col(rule.when))) if rule.when else base
        part = src.select(candidate_exprs(schema, rule, spec)).with_columns(reason_exprs(rule))
        parts.append(part.drop("__gap", "__tblank", "__traw"))
    return pl.concat(parts, how="vertical")


# --- prepare steps: the twins of ehrfm.ingest.mimic.prepare.PREPARE ----------------------------------------

def prepare_patients_local(lf: pl.LazyFrame, load: LocalLoader) -> pl.LazyFrame:
    """``_birth_time`` (1 January of anchor_year - anchor_age) and ``_dod_time`` (dod, unless an admission
    carries a deathtime): :func:`ehrfm.ingest.mimic.prepare.prepare_patients`."""
    year = _to_int(pl.col("anchor_year")) - _to_int(pl.col("anchor_age"))
    lf = lf.with_columns(pl.datetime(year, 1, 1, time_unit="us").alias("_birth_time"))
    dod = pl.when(_trim(pl.col("dod")) != "").then(pl.col("dod"))
    admissions = load("admissions")
    if admissions is None:
        return lf.with_columns(dod.alias("_dod_time"))
    died = (admissions.lazy().filter(parse_time_local(pl.col("deathtime")).is_not_null())
            .select(pl.col(SUBJECT_ID).alias("_died_subject")).unique()
            .with_columns(pl.lit(True).alias("_died")))
    lf = lf.join(died, left_on=SUBJECT_ID, right_on="_died_subject", how="left")
    return lf.with_columns(pl.when(pl.col("_died").is_null()).then(dod).alias("_dod_time")).drop("_died")


def prepare_at_discharge_local(lf: pl.LazyFrame, load: LocalLoader) -> pl.LazyFrame:
    """``_dischtime``: the admission's discharge time (see
    :func:`ehrfm.ingest.mimic.prepare.prepare_at_discharge`)."""
    admissions = load("admissions")
    if admissions is None:
        return lf.with_columns(pl.lit(None, dtype=pl.String).alias("_dischtime"))
    disch = (admissions.lazy()
             .select(pl.col("hadm_id").alias("_hadm"), pl.col("dischtime").alias("_dischtime"))
             .filter(pl.col("_hadm").is_not_null())
             .unique(subset=["_hadm"], keep="first", maintain_order=True))
    return lf.join(disch, left_on="hadm_id", right_on="_hadm", how="left")


def prepare_value_or_text_local(lf: pl.LazyFrame, load: LocalLoader) -> pl.LazyFrame:
    """``_numeric`` from valuenum; ``_text`` = value when there is no numeric value."""
    num = _to_float(pl.col("valuenum"))
    text = pl.when(num.is_null()).then(_trim(pl.col("value")))
    return lf.with_columns(num.alias("_numeric"), text.alias("_text"))


def prepare_prescriptions_local(lf: pl.LazyFrame, load: LocalLoader) -> pl.LazyFrame:
    """``_med_code``: ``MEDICATION//NDC//<ndc>`` for a real NDC, else ``MEDICATION//MIMIC//<drug>``."""
    ndc = _trim(pl.col("ndc"))
    valid = ndc.str.contains(r"^[0-9]{10,11}$") & ~ndc.str.contains(r"^0+$")
    drug = pl.concat_str([pl.lit("MEDICATION//MIMIC//"), _trim(pl.col("drug"))])
    code = pl.when(valid).then(pl.concat_str([pl.lit("MEDICATION//NDC//"), ndc])).otherwise(drug)
    return lf.with_columns(code.alias("_med_code"))


def prepare_omr_local(lf: pl.LazyFrame, load: LocalLoader) -> pl.LazyFrame:
    """``_name``/``_numeric``/``_text``: ``120/80`` becomes a ``//SYSTOLIC`` and a ``//DIASTOLIC`` row
    (``_part`` 0 and 1)."""
    value = _trim(pl.col("result_value"))
    name = _trim(pl.col("result_name"))
    is_pair = value.str.contains(r"^[0-9]+(\.[0-9]+)?/[0-9]+(\.[0-9]+)?$").fill_null(False)
    parts = value.str.split("/")
    pair = pl.concat_list([
        pl.struct(pl.concat_str([name, pl.lit("//SYSTOLIC")]).alias("n"), parts.list.get(0).alias("v")),
        pl.struct(pl.concat_str([name, pl.lit("//DIASTOLIC")]).alias("n"), parts.list.get(1).alias("v")),
    ])
    single = pl.concat_list([pl.struct(name.alias("n"), value.alias("v"))])
    parts_list = pl.when(is_pair).then(pair).otherwise(single)
    lf = (lf.with_columns(parts_list.alias("_parts"),
                          pl.int_ranges(0, parts_list.list.len(), dtype=pl.Int32).alias("_part"))
          .explode(["_parts", "_part"], empty_as_null=True))
    num = _to_float(pl.col("_parts").struct.field("v"))
    return lf.with_columns(
        pl.col("_parts").struct.field("n").alias("_name"),
        num.alias("_numeric"),
        pl.when(num.is_null()).then(pl.col("_parts").struct.field("v")).alias("_text"),
    ).drop("_parts")


PREPARE_LOCAL: dict[str, Callable[[pl.LazyFrame, LocalLoader], pl.LazyFrame]] = {
    "patients": prepare_patients_local,
    "at_discharge": prepare_at_discharge_local,
    "value_or_text": prepare_value_or_text_local,
    "prescriptions": prepare_prescriptions_local,
    "omr": prepare_omr_local,
}


def _local_path(uri: str) -> str:
    """A path polars can scan: a local path or ``file:`` URI becomes a plain absolute path (percent-decoded,
    :func:`ehrfm.storage.local_path`, as pyarrow found it); other URIs are passed through."""
    return uri if storage.is_remote(uri) else storage.local_path(uri)


class _LocalTables:
    """Lazy scans of the raw tables (every column a string, ``_row`` = 0-based data row); a table that a
    prepare step of another table reads is read once, whole, and kept."""

    def __init__(self, root: str, rules: MimicRules) -> None:
        self.root, self.rules = root, rules
        self.uris: dict[str, str | None] = {}
        self.kept: dict[str, pl.DataFrame | None] = {}
        self.info: dict[str, dict[str, Any]] = {}

    def uri(self, name: str) -> str | None:
        if name not in self.uris:
            spec = self.rules.tables.get(name)
            paths = [spec.path] if spec else [f"hosp/{name}", f"icu/{name}"]
            uri = next((u for u in (find_table(self.root, p) for p in paths) if u), None)
            self.uris[name] = uri
            # gzip is not splittable, so Spark knows no row count up front: neither do we (see ingest_mimic)
            self.info[name] = {"file": None, "rows": 0, "absent": True} if uri is None else \
                {"file": uri, "rows": None}
        return self.uris[name]

    def scan(self, name: str) -> pl.LazyFrame | None:
        """The table's scan (the kept frame when a prepare step has read it already)."""
        uri = self.uri(name)
        if uri is None:
            return None
        kept = self.kept.get(name)
        if kept is not None:
            return kept.lazy()
        header = csv_header(uri)
        return (pl.scan_csv(_local_path(uri), schema={c: pl.String for c in header}, has_header=True,
                            quote_char='"', truncate_ragged_lines=True)
                .with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64)))

    def load(self, name: str) -> pl.DataFrame | None:
        """The whole table, read once (for the prepare steps of other tables)."""
        if name not in self.kept:
            lf = self.scan(name)
            self.kept[name] = None if lf is None else lf.collect()
        return self.kept[name]


def _births(patients: pl.DataFrame) -> pl.DataFrame:
    """(subject_id, _birth) from the prepared patients table: :func:`ehrfm.ingest.mimic.ingest.births`."""
    return (patients.lazy()
            .select(_to_int(pl.col(SUBJECT_ID)).alias(SUBJECT_ID), pl.col("_birth_time").alias("_birth"))
            .filter(pl.col(SUBJECT_ID).is_not_null() & pl.col("_birth").is_not_null())
            .group_by(SUBJECT_ID).agg(pl.col("_birth").min()).collect())


def _check_against_birth(candidates: pl.LazyFrame, births: pl.DataFrame) -> pl.LazyFrame:
    """Reject candidates of subjects absent from patients, and events timed before the subject's birth."""
    df = candidates.join(births.lazy(), on=SUBJECT_ID, how="left")
    ok = pl.col("_reason").is_null()
    before = pl.col("time") < pl.col("_birth")
    reason = (pl.when(~ok).then(pl.col("_reason"))
              .when(pl.col("_birth").is_null()).then(pl.lit("subject_id not in patients (or no birth)"))
              .when(before).then(pl.lit("time before birth")))
    fld = (pl.when(~ok).then(pl.col("_field")).when(pl.col("_birth").is_null()).then(pl.lit(SUBJECT_ID))
           .when(before).then(pl.lit("time")))
    return df.with_columns(reason.alias("_reason"), fld.alias("_field")).drop("_birth")


def _needed_columns(header: list[str], rules: Sequence[EventRule], spec: TableSpec) -> list[str]:
    """The raw columns one table's rules and prepare step read (the rest are never parsed)."""
    want = {SUBJECT_ID, spec.id, *PREPARE_COLUMNS.get(spec.prepare or "", ())}
    for rule in rules:
        want |= rule.columns()
    return [c for c in header if c in want]


TableResult = tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]
"""One table's events, rejects and counts (see :func:`mimic_local_candidates`)."""


def _table_result(lf: pl.LazyFrame, rules: Sequence[EventRule], spec: TableSpec, births: pl.DataFrame,
                  uri: str) -> TableResult:
    """Run one table's candidates and split them into events, rejects and per (rule, reason, code) counts."""
    checked = _check_against_birth(table_candidates_local(lf, rules, spec), births).collect()
    counts = checked.group_by("_table", "_rule", "_reason", "code").agg(
        pl.len().alias("count"), pl.col("_first").cast(pl.Int64).sum().alias("rows"),
        pl.col("_row").max().alias("last"),
        pl.col("text_value").min().alias("text"))
    good = checked["_reason"].is_null()
    rejects = checked.filter(~good).select(
        pl.lit(uri).str.replace(r"^file:", "").alias("source_file"),
        pl.col("_row").alias("record_index"), pl.col("_table").alias("resource_type"),
        pl.col("_rid").alias("resource_id"), pl.col("_field").alias("field"),
        pl.col("_reason").alias("reason"))
    return checked.filter(good).select(EVENT_COLUMNS), rejects, counts


def mimic_local_candidates(root: str, rules: MimicRules, threads: int = 1) -> tuple[
        list[TableResult], pl.DataFrame, _LocalTables]:
    """Per table (patients first, then rule order): its events, rejects (REJECTS_SCHEMA columns) and counts
    per (table, rule, reason, code) with the last row and smallest text; the patients' subject ids; the
    tables' info. ``threads`` tables run at once after patients (polars parallelises inside each table;
    two at a time measured no faster on 2 cores and used more CPU time, so one by default)."""
    from concurrent.futures import ThreadPoolExecutor

    tables = _LocalTables(root, rules)
    if tables.uri("patients") is None:
        raise FileNotFoundError(f"MIMIC input {root!r}: hosp/patients.csv(.gz) not found"
                                " (expected <root>/hosp, <root>/icu)")
    by_table: dict[str, list[EventRule]] = {}
    for rule in rules.events:
        by_table.setdefault(rule.table, []).append(rule)
    # the plans are built in order, here (a prepare step may read another table once, see _LocalTables)
    plans: list[tuple[str, pl.LazyFrame, str]] = []
    for name in sorted(by_table, key=lambda n: n != "patients"):
        spec = rules.tables[name]
        raw = tables.scan(name)
        if raw is None:
            if not spec.optional:
                raise FileNotFoundError(f"MIMIC input {root!r}: required table {spec.path}.csv(.gz)"
                                        " not found")
            continue
        uri = tables.uri(name)
        assert uri is not None
        header = raw.collect_schema().names()
        prep_missing = sorted(set(PREPARE_COLUMNS.get(spec.prepare or "", ())) - set(header))
        if prep_missing:
            raise ValueError(f"MIMIC prepare step {spec.prepare}: table {spec.name} ({spec.path}) has no"
                             f" column(s) {prep_missing}")
        lf = raw.select([*_needed_columns(header, by_table[name], spec), "_row"])
        plans.append((name, PREPARE_LOCAL[spec.prepare](lf, tables.load) if spec.prepare else lf, uri))
    # patients first: every other table is checked against its births
    _, patients_lf, patients_uri = plans[0]
    patients = patients_lf.collect()
    births = _births(patients)
    subject_ids = (patients.lazy().select(_to_int(pl.col(SUBJECT_ID)).alias(SUBJECT_ID),
                                          _trim(pl.col(SUBJECT_ID)).alias("source_id"))
                   .filter(pl.col(SUBJECT_ID).is_not_null()).collect())
    results = [_table_result(patients.lazy(), by_table["patients"], rules.tables["patients"], births,
                             patients_uri)]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        futures = [pool.submit(_table_result, lf, by_table[name], rules.tables[name], births, uri)
                   for name, lf, uri in plans[1:]]
        results += [f.result() for f in futures]
    return results, subject_ids, tables


def ingest_mimic_local(
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
    """Ingest a MIMIC-IV root (``hosp/``, ``icu/``) into a MEDS dataset at ``output`` on this machine, with
    no JVM; returns the summary. Same arguments, rules and output as
    :func:`ehrfm.ingest.mimic.ingest.ingest_mimic` (the summary says ``"engine": "local"``)."""
    from ehrfm.ingest.local_writer import write_meds_local

    input_root = storage.normalize(input_root)  # a file: URI as its (percent-decoded) absolute path
    rules = rules or load_rules()
    results, subject_ids, tables = mimic_local_candidates(input_root, rules)
    counts = pl.concat([r[2] for r in results])
    codes, per_rule = rule_summary(counts.iter_rows(named=True), tables.info, rules)
    version = resolve_dataset_version(dataset_version, input_root)
    summary = {"source": "mimic-iv", "input": input_root, "tables": tables.info, "rules": per_rule,
               "dataset_version": version}
    events = pl.concat([r[0] for r in results], how="vertical")
    rejects = pl.concat([r[1] for r in results], how="vertical")
    del results
    return write_meds_local(
        events,
        output,
        dataset_name=dataset_name,
        etl_name="ehrfm.ingest.mimic",
        code_descriptions=code_metadata(codes, input_root, rules),
        dataset_version=version["value"],
        rejects=rejects,
        subject_ids=subject_ids,
        summary=summary,
        split_ratios=split_ratios,
        split_seed=split_seed,
        rows_per_shard=rows_per_shard,
    )
