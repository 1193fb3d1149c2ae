"""The label engine as native Spark SQL expressions: the rules of :mod:`ehrfm.labels.engine` compiled per
task.

One pass over the events: a single ``groupBy(subject_id)`` gathers, per subject, the facts every task reads
(last and first event time, earliest death) and the events whose code any task reads, as one array of
structs sorted by ``(time, code, encounter_id)`` with one precomputed match flag per code-pattern group.
Each task is then one Spark SQL expression of higher-order functions (``filter``/``transform``/``array_min``)
over that array -- index events, encounter lookup, exclusions, outcome window, censoring, forecast targets --
evaluated by the JVM: no Python runs per subject. The per-subject Python engine (``label_subject_rows``) is
the reference twin; tests/labels compare the two row for row.

The expressions are generated as SQL text (one ``expr`` per task, parsed once by Spark) rather than built
from Column objects: a Column tree costs one py4j call per node, about a second per task on a loaded
machine. Only the engine's own field names, numbers and fixed codes go into the text; the tasks' code
patterns are matched once per event, in :func:`subject_frame`, through the Column API (no quoting).

Times are int64 microseconds since 1970 (timezone-independent ``timestampdiff`` on ``timestamp_ntz``), as in
the reference engine, so durations are the same IEEE divisions. Ties at one instant resolve by ``(code,
encounter_id)`` in both engines -- the raw code, not its encounter alias.

Encounter boundaries are read through :mod:`ehrfm.labels.aliases`: each event's canonical code is one
``CASE WHEN`` built from the alias table (``HOSPITAL_ADMISSION//…`` -> ``ENCOUNTER//INPATIENT//START``…),
encounters are built from it, and a task pattern flag is set when the raw code or the canonical one matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd

from ehrfm.labels.aliases import ENCOUNTER_ALIASES, ENCOUNTER_REGEX, alias_regex
from ehrfm.labels.spec import CodePattern, TaskSpec, patterns_regex, relevant_codes_regex
from ehrfm.schema import CODE, DEATH_CODE, ENCOUNTER_ID, SUBJECT_ID, TIME

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

ENC_REGEX = ENCOUNTER_REGEX
_EPOCH = "TIMESTAMP_NTZ'1970-01-01 00:00:00'"
_US_PER_DAY = 86_400_000_000
LABEL_FIELDS = ("boolean_value", "integer_value", "float_value", "categorical_value", "duration_days",
                "event", "target_codes")
_TYPES = ("boolean", "bigint", "double", "string", "double", "tinyint", "array<string>")
_DEATH = f"'{DEATH_CODE}'"
# stage A of every task: the index event, its prediction time and its encounter's span [s, e]
_A = ("it", "code", "ienc", "pred", "has_enc", "s", "e")


def _us(td: pd.Timedelta) -> str:
    """A duration as a bigint SQL literal of microseconds."""
    return f"{int(td.value // 1000)}L"


class _Flags:
    """One boolean field per distinct pattern tuple the tasks use (``f0``, ``f1``...): each regex runs once
    per event, not once per (index event, event) pair."""

    def __init__(self, specs: Sequence[TaskSpec]) -> None:
        groups: list[tuple[CodePattern, ...]] = []
        for s in specs:
            for g in (s.index.codes, s.outcome.codes, s.outcome.next_encounter):
                if g and g not in groups:
                    groups.append(g)
        self.groups = groups

    def name(self, patterns: tuple[CodePattern, ...]) -> str:
        """The struct field holding ``patterns``' match flag."""
        return f"f{self.groups.index(patterns)}"


def _extend(arr: str, names: Sequence[str], **new: str) -> str:
    """``transform(arr, x -> struct(x.<names>..., <new> AS <name>...))``: one stage of a per-row computation;
    a later stage reads what an earlier one computed once instead of repeating an array scan."""
    fields = [f"x.{n} AS {n}" for n in names] + [f"{v} AS {k}" for k, v in new.items()]
    return f"transform({arr}, x -> struct({', '.join(fields)}))"


def canonical_column(code: Column) -> Column:
    """``code`` as its encounter alias when it has one (:data:`ehrfm.labels.aliases.ENCOUNTER_ALIASES`, first
    match wins, as in :func:`~ehrfm.labels.aliases.canonical_code`), else unchanged: one CASE WHEN."""
    from pyspark.sql import functions as F

    (rx, canon), *rest = ENCOUNTER_ALIASES
    out = F.when(code.rlike(alias_regex(rx)), F.lit(canon))
    for rx, canon in rest:
        out = out.when(code.rlike(alias_regex(rx)), F.lit(canon))
    return out.otherwise(code)


def subject_frame(events: DataFrame, specs: Sequence[TaskSpec]) -> DataFrame:
    """One row per subject: ``record_end``, ``first_time``, ``death`` (int64 us); ``ev``, the sorted array of
    the events the tasks read (``t``, ``code`` (raw), ``enc`` ("" when none), ``cls``: the class of an
    ``ENCOUNTER//<CLASS>//START|END`` event -- or of an aliased one -- with an encounter id, else null;
    ``is_start`` and the flags); and
    ``encs``: the subject's encounters as (enc, cls, st, en) -- earliest START, latest END."""
    from pyspark.sql import functions as F

    flags = _Flags(specs)
    if ENCOUNTER_ID not in events.columns:
        events = events.withColumn(ENCOUNTER_ID, F.lit(None).cast("string"))
    # SQL timestampdiff (Spark >= 3.3) rather than F.timestamp_diff (4.0): the etl extra allows pyspark 3.5
    t = F.expr(f"timestampdiff(MICROSECOND, {_EPOCH}, CAST(`{TIME}` AS TIMESTAMP_NTZ))")
    ev = events.select(F.col(SUBJECT_ID).cast("long").alias(SUBJECT_ID), t.alias("t"),
                       F.col(CODE).cast("string").alias("code"),
                       F.coalesce(F.col(ENCOUNTER_ID).cast("string"), F.lit("")).alias("enc"))
    ev = ev.where(F.col("t").isNotNull()).withColumn("canon", canonical_column(F.col("code")))
    is_enc = F.col("canon").rlike(ENC_REGEX) & (F.col("enc") != "")

    def flag(g: tuple[CodePattern, ...]) -> Column:  # the raw code or its alias (engine: pattern_hits)
        rx = patterns_regex(g)
        return F.col("code").rlike(rx) | ((F.col("canon") != F.col("code")) & F.col("canon").rlike(rx))

    item = F.struct(
        F.col("t"), F.col("code"), F.col("enc"),
        F.when(is_enc, F.regexp_extract("canon", ENC_REGEX, 1)).alias("cls"),
        F.col("canon").endswith("//START").alias("is_start"),
        *[flag(g).alias(flags.name(g)) for g in flags.groups],
    )
    relevant = F.col("code").rlike(relevant_codes_regex(specs))
    subjects = ev.groupBy(SUBJECT_ID).agg(
        F.max("t").alias("record_end"), F.min("t").alias("first_time"),
        F.min(F.when(F.col("code") == DEATH_CODE, F.col("t"))).alias("death"),
        F.array_sort(F.collect_list(F.when(relevant, item))).alias("ev"),
    )
    keys = ("array_distinct(transform(filter(ev, v -> v.cls IS NOT NULL), "
            "v -> struct(v.enc AS enc, v.cls AS cls)))")
    mine = "filter(ev, v -> v.enc = k.enc AND v.cls = k.cls AND {} v.is_start)"
    encs = (f"transform({keys}, k -> struct(k.enc AS enc, k.cls AS cls, "
            f"array_min(transform({mine.format('')}, v -> v.t)) AS st, "
            f"array_max(transform({mine.format('NOT')}, v -> v.t)) AS en))")
    return subjects.withColumn("encs", F.expr(encs))


def _index_rows(spec: TaskSpec, flags: _Flags) -> str:
    """Stage A: index events -> (it, code, ienc, pred, has_enc, s, e), ``pred`` the prediction time, [s, e]
    the index event's encounter (``engine._find_encounter``: same id and class for an encounter code, else
    INPATIENT, else the smallest class with that id)."""
    span = "struct(y.st AS st, y.en AS en)"
    exact = f"array_min(transform(filter(encs, y -> y.enc = e.enc AND y.cls = e.cls), y -> {span}))"
    by_id = ("array_min(transform(filter(encs, y -> y.enc = e.enc), "
             f"y -> struct(y.cls != 'INPATIENT' AS k, y.cls AS cls, {span} AS se))).se")
    found = f"CASE WHEN e.enc = '' THEN NULL WHEN e.cls IS NOT NULL THEN {exact} ELSE {by_id} END"
    a = (f"transform(filter(ev, e -> e.{flags.name(spec.index.codes)}), e -> struct(e.t AS it, "
         f"e.code AS code, e.enc AS ienc, e.t + {_us(spec.prediction_offset)} AS pred, {found} AS span))")
    return _extend(a, _A[:4], has_enc="x.span IS NOT NULL", s="x.span.st", e="x.span.en")


def _eligible(spec: TaskSpec) -> str:
    """Index requirements at prediction time and exclusions (``engine._eligible``) for row ``x``; never
    null."""
    ok = ["TRUE"]
    if "alive" in spec.index.require:
        ok.append("(death IS NULL OR death > x.pred)")
    if "encounter_ongoing" in spec.index.require:
        ok.append("coalesce(x.s <= x.pred AND x.pred < x.e, FALSE)")
    grace = spec.exclusions.death_during_encounter
    if grace is not None:
        # the stay ended in death: a death carrying its id, or one timed in [START, END + grace]
        ok.append(f"NOT (x.ienc != '' AND exists(ev, v -> v.code = {_DEATH} AND v.enc = x.ienc))")
        ok.append("NOT (x.has_enc AND coalesce(coalesce(x.s, x.e) <= death AND "
                  f"death <= coalesce(x.e, x.s) + {_us(grace)}, FALSE))")
    if spec.exclusions.min_history > pd.Timedelta(0):
        ok.append(f"coalesce(first_time <= x.pred - {_us(spec.exclusions.min_history)}, FALSE)")
    return " AND ".join(ok)


def _label(keep: str, **values: str) -> str:
    """struct(keep, pred, LABEL_FIELDS...) of row ``x`` with ``values`` set, the other label columns null."""
    cols = [f"x.ok AND coalesce({keep}, FALSE) AS keep", "x.pred AS pred"]
    cols += [f"CAST({values.get(k, 'NULL')} AS {t}) AS {k}"
             for k, t in zip(LABEL_FIELDS, _TYPES, strict=True)]
    return f"struct({', '.join(cols)})"


def _window_task(a: str, spec: TaskSpec, flags: _Flags) -> str:
    """Binary / time-to-event rows with an outcome window (``engine._outcome``)."""
    o = spec.outcome
    if o.until == "encounter_end":
        wend, has_window = f"(x.e + {_us(o.grace)})", "x.e IS NOT NULL"
    else:
        assert o.within is not None
        wend, has_window = f"(x.pred + {_us(o.within)})", "TRUE"
    in_window = f"v.t <= {wend}"
    if o.same_encounter:  # events carrying the index encounter's id count even when timed after its END
        in_window = f"({in_window} OR (x.ienc != '' AND v.enc = x.ienc))"
    hit = f"v.{flags.name(o.codes)} AND v.t > x.pred AND coalesce({in_window}, FALSE)"
    if o.other_encounter:
        hit += " AND (x.ienc = '' OR v.enc != x.ienc)"
    hit += " AND (death IS NULL OR v.t <= death)"  # a record dated after the death is never an outcome
    b = _extend(a, _A, ok=_eligible(spec), te=f"array_min(transform(filter(ev, v -> {hit}), v -> v.t))")
    death_first = (f"coalesce(death IS NOT NULL AND x.pred < death AND death <= {wend} "
                   "AND (x.te IS NULL OR death < x.te), FALSE)")
    c = _extend(b, (*_A, "ok", "te"), df=death_first)
    if spec.kind == "time_to_event":
        stop = f"least({wend}, record_end)" if spec.censoring.followup == "record_end" else wend
        stop = f"CASE WHEN x.df THEN least({stop}, death) ELSE {stop} END"  # least() skips nulls
        duration = f"CASE WHEN x.te IS NOT NULL THEN x.te - x.pred ELSE {stop} - x.pred END"
        keep = f"{has_window} AND (x.te IS NOT NULL OR {stop} > x.pred)"  # no follow-up at all: dropped
        row = _label(keep, duration_days=f"CAST({duration} AS DOUBLE) / {_US_PER_DAY}.0D",
                     event="CASE WHEN x.te IS NOT NULL THEN 1 ELSE 0 END")
    else:
        known_end = ("TRUE" if o.until == "encounter_end" or spec.censoring.followup == "none"
                     else f"record_end >= {wend}")
        death_keeps = "FALSE" if spec.censoring.death == "exclude" else "TRUE"
        keep = (f"{has_window} AND (x.te IS NOT NULL OR (x.df AND {death_keeps}) "
                f"OR (NOT x.df AND {known_end}))")
        row = _label(keep, boolean_value="x.te IS NOT NULL")
    return f"transform({c}, x -> {row})"


def _duration_task(a: str, spec: TaskSpec) -> str:
    """``outcome.encounter_duration_gt``: binary on the index encounter's END - START."""
    gt = spec.outcome.encounter_duration_gt
    assert gt is not None
    b = _extend(a, _A, ok=_eligible(spec))
    row = _label("x.s IS NOT NULL AND x.e IS NOT NULL", boolean_value=f"x.e - x.s > {_us(gt)}")
    return f"transform({b}, x -> {row})"


def _forecast_task(a: str, spec: TaskSpec, flags: _Flags) -> str:
    """Target codes recorded at the first encounter that starts after prediction time (``engine._forecast``):
    carrying its id, or no id and timed within its visit span [first START, last END] over all classes."""
    o = spec.outcome
    opens = f"v.{flags.name(o.next_encounter)} AND v.enc != '' AND v.t > x.pred"
    if o.within is not None:
        opens += f" AND v.t <= x.pred + {_us(o.within)}"
    opens += " AND (death IS NULL OR v.t <= death)"  # not an encounter recorded after the death
    # ev is sorted by (t, code, enc): its minimum is the first in time order
    b = _extend(a, _A, ok=_eligible(spec), nx=f"array_min(filter(ev, v -> {opens}))")
    mine = "filter(encs, y -> y.enc = x.nx.enc)"
    vs = f"coalesce(array_min(transform({mine}, y -> y.st)), x.nx.t)"
    c = _extend(b, (*_A, "ok", "nx"), vs=vs)
    d = _extend(c, (*_A, "ok", "nx", "vs"), ve=f"coalesce(array_max(transform({mine}, y -> y.en)), x.vs)")
    linked = (f"filter(ev, v -> v.{flags.name(o.codes)} AND (v.enc = x.nx.enc OR "
              "(v.enc = '' AND v.t >= x.vs AND v.t <= x.ve)))")
    e = _extend(d, ("ok", "pred", "nx"), tc=f"array_sort(array_distinct(transform({linked}, v -> v.code)))")
    keep = "x.nx IS NOT NULL" + ("" if o.allow_empty else " AND size(x.tc) > 0")
    return f"transform({e}, x -> {_label(keep, target_codes='x.tc')})"


def task_rows(spec: TaskSpec, flags: _Flags) -> str:
    """SQL over :func:`subject_frame`'s columns: one subject's kept label structs for ``spec``, one per
    prediction time (the earliest index event wins, as in ``engine._finish``), sorted by it."""
    a = _index_rows(spec, flags)
    if spec.outcome.encounter_duration_gt is not None:
        rows = _duration_task(a, spec)
    elif spec.kind == "forecast":
        rows = _forecast_task(a, spec, flags)
    else:
        rows = _window_task(a, spec, flags)
    return f"filter({rows}, x -> x.keep)"


def labels_by_task(events: DataFrame, specs: Sequence[TaskSpec]) -> DataFrame:
    """One row per subject: ``subject_id`` and one array column per task (named as the task) of label structs
    (``pred`` in us and the LABELS_SCHEMA value columns), one per prediction time, sorted by it."""
    from pyspark.sql import functions as F

    flags = _Flags(specs)
    staged = subject_frame(events, specs).select(
        F.col(SUBJECT_ID), *[F.expr(task_rows(s, flags)).alias(s.name) for s in specs])
    # rows come in index-event order, so equal prediction times are adjacent: keep the first of each run.
    # A separate projection so the task expression is computed once, not once per element; CASE, not OR, so
    # that element_at(_, 0) (an error) is never evaluated
    return staged.select(F.col(SUBJECT_ID), *[F.expr(
        f"filter(`{s.name}`, (x, i) -> CASE WHEN i = 0 THEN TRUE "
        f"ELSE element_at(`{s.name}`, i).pred != x.pred END)").alias(s.name) for s in specs])


def task_table(by_task: DataFrame, name: str) -> DataFrame:
    """The label table of one task (LABELS_SCHEMA columns) from :func:`labels_by_task`."""
    from pyspark.sql import functions as F

    # explode_outer, not explode: for explode Spark infers a `size(array) > 0` filter and pushes it below the
    # projections, inlining (and so computing twice, encounters once per index event) the whole task
    rows = (by_task.select(F.col(SUBJECT_ID), F.explode_outer(F.col(f"`{name}`")).alias("x"))
            .where(F.col("x").isNotNull()).select(SUBJECT_ID, "x.*"))
    pred = F.expr(f"timestampadd(MICROSECOND, pred, {_EPOCH})").alias("prediction_time")
    return rows.select(F.col(SUBJECT_ID), pred, *LABEL_FIELDS)


def summarize_spark(by_task: DataFrame, specs: Sequence[TaskSpec], splits: DataFrame | None) -> pd.DataFrame:
    """:func:`~ehrfm.labels.direct.summarize` as one Spark aggregate over :func:`labels_by_task` (no label
    table is read back to the driver): rows, subjects, positives, prevalence per task and split."""
    from pyspark.sql import functions as F

    from ehrfm.labels.direct import SUMMARY_COLUMNS

    one = {"binary": "CASE WHEN coalesce(x.boolean_value, FALSE) THEN 1L ELSE 0L END",
           "time_to_event": "coalesce(CAST(x.event AS BIGINT), 0L)",
           "forecast": "CAST(coalesce(size(x.target_codes), 0) AS BIGINT)"}  # forecast: number of targets
    frame = by_task
    if splits is not None:
        frame = frame.join(splits.select(SUBJECT_ID, "split"), SUBJECT_ID, "left")
    split = F.coalesce(F.col("split"), F.lit("unassigned")) if splits is not None else F.lit("all")
    aggs = []
    for i, s in enumerate(specs):
        n = f"size(`{s.name}`)"
        aggs += [F.expr(f"sum({n})").alias(f"r{i}"), F.expr(f"sum(CASE WHEN {n} > 0 THEN 1 ELSE 0 END)")
                 .alias(f"s{i}"),
                 F.expr(f"sum(aggregate(`{s.name}`, 0L, (acc, x) -> acc + {one[s.kind]}))").alias(f"p{i}")]
    got = frame.groupBy(split.alias("split")).agg(*aggs).toPandas().set_index("split").fillna(0)
    out = []
    for i, s in enumerate(specs):
        per = {str(k): (int(v[f"r{i}"]), int(v[f"s{i}"]), int(v[f"p{i}"])) for k, v in got.iterrows()}
        per = {k: v for k, v in sorted(per.items()) if v[0] > 0}
        groups = [("all", tuple(sum(v[j] for v in per.values()) for j in range(3)))]
        groups += [] if splits is None else list(per.items())
        for name, (rows, subjects, pos) in groups:
            out.append({"task": s.name, "kind": s.kind, "split": name, "rows": rows, "subjects": subjects,
                        "positives": pos, "prevalence": (pos / rows) if rows else float("nan")})
    return pd.DataFrame(out, columns=list(SUMMARY_COLUMNS))
