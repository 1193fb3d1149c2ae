"""The label engine on one machine: the rules of :mod:`ehrfm.labels.engine` as columnar polars code, no Spark.

``ehrfm label --engine local``. One process reads the four columns the rules need from the MEDS event files
(either layout, :func:`ehrfm.meds_files.meds_data_files`), computes each subject's facts once (last and first
event time, earliest death), keeps only the events whose code a task reads, and labels every task with joins
and group-bys over those events -- multi-threaded, no Python per subject or per event. The per-subject
Python engine (:func:`~ehrfm.labels.engine.label_subject_rows`) is the definition of correct; tests/labels
compare the two row for row. :mod:`ehrfm.labels.spark_engine` is the same rules for a cluster.

The task code patterns run once per distinct code (:func:`~ehrfm.labels.spec.pattern_hits`: the raw code or
its encounter alias, :mod:`ehrfm.labels.aliases`), into one boolean column per pattern group joined onto the
events. Times are int64 microseconds since 1970, as in the reference engine, so durations are the same IEEE
divisions; ties at one instant resolve by ``(code, encounter_id)`` -- the raw code, in byte (= code point)
order, the order of the other two engines.

Shapes: ``E`` events (``subject_id, t, code, enc, row``, flags), sorted by (subject, t, code, enc) with
``row`` their position; ``ENC`` encounters (subject, enc, cls, st, en); ``S`` subjects (record_end,
first_time, death). A task starts from its index events (``I``: one per index event, ``idx`` its row) and
ends with one label row per kept index event, the first per prediction time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ehrfm.labels.aliases import ENCOUNTER_REGEX, canonical_code
from ehrfm.labels.spark_engine import _Flags  # one flag column per pattern tuple, named as there
from ehrfm.labels.spec import CodePattern, TaskSpec, compiled_patterns, pattern_hits, relevant_codes_regex
from ehrfm.schema import CODE, DEATH_CODE, ENCOUNTER_ID, LABELS_SCHEMA, PREDICTION_TIME, SUBJECT_ID, TIME

if TYPE_CHECKING:
    import polars as pl

_US_PER_DAY = 86_400_000_000
# (index event, candidate event) pairs made at once, at most (about 0.5 GB of pair columns)
MAX_PAIRS = 20_000_000
_ENC = re.compile(ENCOUNTER_REGEX)
SID = SUBJECT_ID


def _us(td: object) -> int:
    """A pandas Timedelta as int microseconds (the reference engine's ``_us``)."""
    return int(td.value // 1000)  # type: ignore[attr-defined]


def read_events(meds_dir: str | Path) -> pl.LazyFrame:
    """``subject_id`` (Int64), ``t`` (Int64 us), ``code`` (String), ``enc`` (String, "" when none) of every
    timed event of the MEDS dataset at ``meds_dir`` (either layout; only these four columns are read), as a
    lazy scan: :func:`prepare` reads it. Each file is cast on its own, so files whose types differ
    (``timestamp[ns]`` beside ``[us]``, an all-null ``encounter_id``, none at all) read together."""
    import polars as pl

    from ehrfm.meds_files import meds_data_files

    files = meds_data_files(meds_dir)
    if not files:
        raise FileNotFoundError(f"meds={str(meds_dir)!r}: no event files under data/ (run `ehrfm ingest`)")
    return pl.concat([_scan(f) for f in files], how="vertical")


def _scan(file: str) -> pl.LazyFrame:
    """One event file in :func:`read_events`' columns and types."""
    import polars as pl

    scan = _scan_parquet(file)
    schema = scan.collect_schema()
    for c in (SUBJECT_ID, TIME, CODE):
        if c not in schema:
            raise ValueError(f"{file}: no column {c!r} (a MEDS event file has subject_id, time, code)")
    time = pl.col(TIME)
    dtype = schema[TIME]
    if isinstance(dtype, pl.Datetime) and dtype.time_zone is not None:
        time = time.dt.convert_time_zone("UTC").dt.replace_time_zone(None)  # naive UTC wall time
    enc = (pl.col(ENCOUNTER_ID).cast(pl.String).fill_null("") if ENCOUNTER_ID in schema
           else pl.lit("", pl.String))
    return scan.select(
        pl.col(SUBJECT_ID).cast(pl.Int64).alias(SID),
        time.cast(pl.Datetime("us")).dt.epoch("us").alias("t"),
        pl.col(CODE).cast(pl.String).alias("code"),
        enc.alias("enc"),
    ).filter(pl.col("t").is_not_null())


# schemes polars reads itself (object stores, credentials from the usual environment); s3a:// is Hadoop's name
# for s3://
_POLARS_SCHEMES = {"s3": "s3", "s3a": "s3", "gs": "gs", "gcs": "gs"}


def _scan_parquet(file: str) -> pl.LazyFrame:
    """A lazy scan of one parquet file at a local path or URI: local files and object stores by polars,
    other schemes (``hdfs://`` ...) through :func:`ehrfm.storage.filesystem` as a pyarrow dataset."""
    import polars as pl

    from ehrfm import storage

    kind = storage.scheme(file)
    if kind in (None, "file"):
        return pl.scan_parquet(storage.local_path(file), hive_partitioning=False)
    if kind in _POLARS_SCHEMES:
        uri = f"{_POLARS_SCHEMES[kind]}://{file.split('://', 1)[1]}"
        return pl.scan_parquet(uri, hive_partitioning=False)
    import pyarrow.dataset as ds

    fs, path = storage.filesystem(file)
    return pl.scan_pyarrow_dataset(ds.dataset(path, filesystem=fs, format="parquet"))


def _code_table(codes: Sequence[str], specs: Sequence[TaskSpec], groups: _Flags) -> pl.DataFrame:
    """One row per distinct code a task reads: its flags, encounter class and START flag (regexes run once
    per code, as in the reference engine's ``_Timeline.matching``)."""
    import polars as pl

    relevant = re.compile(relevant_codes_regex(specs))
    kept = [c for c in codes if c is not None and relevant.match(c)]
    canon = [canonical_code(c) for c in kept]
    matches = [_ENC.match(c) for c in canon]
    cols: dict[str, pl.Series] = {
        "code": pl.Series(kept, dtype=pl.String),
        "ccls": pl.Series([m.group(1) if m else None for m in matches], dtype=pl.String),
        "is_start": pl.Series([c.endswith("//START") for c in canon], dtype=pl.Boolean),
    }
    for g in groups.groups:
        rx = compiled_patterns(g)
        cols[groups.name(g)] = pl.Series([pattern_hits(rx, c) for c in kept], dtype=pl.Boolean)
    return pl.DataFrame(cols)


class Prepared:
    """The facts every task reads, computed once from the events."""

    def __init__(self, events: pl.LazyFrame | pl.DataFrame, specs: Sequence[TaskSpec]) -> None:
        import polars as pl

        self.groups = _Flags(specs)
        frame = events.lazy()
        # a first pass over the code column alone: the task patterns run once per distinct code in Python
        # (re, as in the other engines), and the events are then read keeping only the codes a task reads
        distinct = frame.select(pl.col("code").unique()).collect().get_column("code").to_list()
        codes = _code_table(distinct, specs, self.groups)
        # follow-up censoring and min_history see every timed event, not only the codes the tasks read
        subjects = frame.group_by(SID).agg(
            pl.col("t").max().alias("record_end"), pl.col("t").min().alias("first_time"),
            pl.col("t").filter(pl.col("code") == DEATH_CODE).min().alias("death"))
        # one scan feeds both (polars shares it: common subplan elimination)
        self.subjects, ev = pl.collect_all([subjects, frame.join(codes.lazy(), on="code", how="inner")],
                                           engine="streaming")
        # canonical order (t, code, enc), never the file order: ties at one instant resolve as in the other
        # engines; ``row`` is that order, so "the first event" is the smallest row
        ev = ev.sort([SID, "t", "code", "enc"]).with_row_index("row")
        self.events = ev.with_columns(
            pl.when(pl.col("enc") != "").then(pl.col("ccls")).alias("cls")).join(
            self.subjects.select(SID, "death"), on=SID, how="left")
        # encounters keyed by (id, class): earliest START, latest END (engine._timeline)
        self.encounters = self.events.filter(pl.col("cls").is_not_null()).group_by(SID, "enc", "cls").agg(
            pl.col("t").filter(pl.col("is_start")).min().alias("st"),
            pl.col("t").filter(~pl.col("is_start")).max().alias("en"))
        self.death_encounters = self.events.filter(
            (pl.col("code") == DEATH_CODE) & (pl.col("enc") != "")).select(SID, "enc").unique()

    def matches(self, patterns: tuple[CodePattern, ...]) -> pl.Expr:
        """Boolean expression over :attr:`events`: the code (raw or its alias) matches any of ``patterns``;
        no pattern matches nothing (the reference's ``_Timeline.matching``)."""
        import polars as pl

        return pl.col(self.groups.name(patterns)) if patterns else pl.lit(False)


def _index_rows(p: Prepared, spec: TaskSpec) -> pl.DataFrame:
    """Index events with ``pred`` and their encounter's span ``s``, ``e`` and ``has_enc``
    (``engine._find_encounter``: same id and class for an encounter code, else INPATIENT, else the smallest
    class with that id; none without an id)."""
    import polars as pl

    idx = p.events.filter(p.matches(spec.index.codes)).select(
        SID, pl.col("row").alias("idx"), pl.col("t").alias("it"), pl.col("enc").alias("ienc"), "ccls",
        (pl.col("t") + _us(spec.prediction_offset)).alias("pred"), "death")
    encs = p.encounters.with_columns(pl.lit(True).alias("found"))
    exact = encs.rename({"enc": "ienc", "cls": "ccls"})
    by_id = (encs.sort([SID, "enc", pl.col("cls") != "INPATIENT", "cls"])
             .group_by(SID, "enc", maintain_order=True).first()
             .select(SID, pl.col("enc").alias("ienc"), pl.col("st").alias("st2"), pl.col("en").alias("en2"),
                     pl.col("found").alias("found2")))
    idx = idx.join(exact, on=[SID, "ienc", "ccls"], how="left").join(by_id, on=[SID, "ienc"], how="left")
    with_id = pl.col("ienc") != ""
    is_enc = pl.col("ccls").is_not_null()
    return idx.with_columns(
        pl.when(with_id & is_enc).then(pl.col("st")).when(with_id).then(pl.col("st2")).alias("s"),
        pl.when(with_id & is_enc).then(pl.col("en")).when(with_id).then(pl.col("en2")).alias("e"),
        pl.when(with_id & is_enc).then(pl.col("found")).when(with_id).then(pl.col("found2"))
        .fill_null(False).alias("has_enc"),
    ).drop("st", "en", "found", "st2", "en2", "found2")


def _eligible(p: Prepared, spec: TaskSpec, idx: pl.DataFrame) -> pl.DataFrame:
    """Index requirements at prediction time and exclusions (``engine._eligible``)."""
    import polars as pl

    ok = pl.lit(True)
    death, pred, s, e = pl.col("death"), pl.col("pred"), pl.col("s"), pl.col("e")
    if "alive" in spec.index.require:
        ok &= death.is_null() | (death > pred)
    if "encounter_ongoing" in spec.index.require:
        ok &= (s <= pred).fill_null(False) & (pred < e).fill_null(False)
    grace = spec.exclusions.death_during_encounter
    if grace is not None:
        # the stay ended in death: a death carrying its id, or one timed in [START, END + grace]
        died_in = p.death_encounters.select(SID, pl.col("enc").alias("ienc"), pl.lit(True).alias("_died"))
        idx = idx.join(died_in, on=[SID, "ienc"], how="left")
        ok &= pl.col("_died").is_null()
        lo, hi = pl.coalesce(s, e), pl.coalesce(e, s)
        timed_in = (lo <= death).fill_null(False) & (death <= hi + _us(grace)).fill_null(False)
        ok &= ~(pl.col("has_enc") & timed_in)
    history = _us(spec.exclusions.min_history)
    if history > 0:
        idx = idx.join(p.subjects.select(SID, "first_time"), on=SID, how="left")
        ok &= (pl.col("first_time") <= pred - history).fill_null(False)
    return idx.filter(ok)


def _per_subject_pairs(left: pl.DataFrame, right: pl.DataFrame,
                       reduce: Callable[[pl.DataFrame], pl.DataFrame]) -> pl.DataFrame:
    """``reduce`` of every (left row, right row) pair of one subject, concatenated. The pairs are made for
    batches of subjects holding about :data:`MAX_PAIRS` pairs each, so that a task pairing many index events
    with many outcome events (every lab with every later lab) needs bounded memory; ``reduce`` must only
    combine rows of one subject (filter, or group by index event)."""
    import polars as pl

    sizes = left.group_by(SID).len("nl").join(right.group_by(SID).len("nr"), on=SID)
    pairs = sizes.select(SID, (pl.col("nl") * pl.col("nr")).alias("n")).sort(SID)
    if pairs.get_column("n").sum() <= MAX_PAIRS:
        return reduce(left.join(right, on=SID, how="inner"))
    batches = pairs.with_columns((pl.col("n").cum_sum() // MAX_PAIRS).alias("batch"))
    parts = []
    for (_,), subjects in batches.select(SID, "batch").group_by("batch", maintain_order=True):
        keys = subjects.select(SID)
        parts.append(reduce(left.join(keys, on=SID, how="semi").join(
            right.join(keys, on=SID, how="semi"), on=SID, how="inner")))
    return pl.concat(parts)


def _first_hit(p: Prepared, spec: TaskSpec, rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` with ``te``: the earliest outcome event in the window (``engine._outcome``'s ``hit``)."""
    import polars as pl

    o = spec.outcome
    out = p.events.filter(p.matches(o.codes)).select(SID, "t", pl.col("enc").alias("oenc"))
    if not (o.same_encounter or o.other_encounter):
        # no condition on the encounter: the hits are the outcome events in (pred, min(wend, death)], so the
        # earliest is the first one after pred when that one is in the window -- a sorted as-of join, not
        # every (index, outcome) pair
        after = rows.select(SID, "idx", "pred").sort("pred").join_asof(
            out.select(SID, pl.col("t").alias("te")).sort("te"), left_on="pred", right_on="te", by=SID,
            strategy="forward", allow_exact_matches=False, check_sortedness=False)
        rows = rows.join(after.select("idx", "te"), on="idx", how="left")
        t_next, death = pl.col("te"), pl.col("death")
        inside = (t_next <= pl.col("wend")) & (death.is_null() | (t_next <= death))
        return rows.with_columns(pl.when(inside).then(t_next).alias("te"))
    in_window = pl.col("t") <= pl.col("wend")
    if o.same_encounter:  # events carrying the index encounter's id count even when timed after its END
        in_window |= (pl.col("ienc") != "") & (pl.col("oenc") == pl.col("ienc"))
    hit = (pl.col("t") > pl.col("pred")) & in_window.fill_null(False)
    if o.other_encounter:
        hit &= (pl.col("ienc") == "") | (pl.col("oenc") != pl.col("ienc"))
    hit &= pl.col("death").is_null() | (pl.col("t") <= pl.col("death"))  # nothing after the death counts
    first = pl.col("t").min().alias("te")
    te = _per_subject_pairs(rows.select(SID, "idx", "pred", "wend", "ienc", "death"), out,
                            lambda pairs: pairs.filter(hit).group_by("idx").agg(first))
    return rows.join(te, on="idx", how="left")


def _window_task(p: Prepared, spec: TaskSpec, rows: pl.DataFrame) -> pl.DataFrame:
    """Binary / time-to-event rows with an outcome window (``engine._outcome``)."""
    import polars as pl

    o = spec.outcome
    if o.until == "encounter_end":
        rows = rows.filter(pl.col("e").is_not_null()).with_columns((pl.col("e") + _us(o.grace)).alias("wend"))
    else:
        assert o.within is not None
        rows = rows.with_columns((pl.col("pred") + _us(o.within)).alias("wend"))
    rows = _first_hit(p, spec, rows.join(p.subjects.select(SID, "record_end"), on=SID, how="left"))
    death, pred, wend, te = pl.col("death"), pl.col("pred"), pl.col("wend"), pl.col("te")
    death_first = (death.is_not_null() & (pred < death) & (death <= wend)
                   & (te.is_null() | (death < te))).fill_null(False)
    if spec.kind == "time_to_event":
        stop = wend
        if spec.censoring.followup == "record_end":
            stop = pl.min_horizontal(stop, pl.col("record_end"))  # skips nulls, as min() over known ends
        stop = pl.when(death_first).then(pl.min_horizontal(stop, death)).otherwise(stop)
        rows = rows.with_columns(stop.alias("stop")).filter(te.is_not_null() | (pl.col("stop") > pred))
        duration = pl.when(te.is_not_null()).then(te - pred).otherwise(pl.col("stop") - pred)
        # microseconds here; days in :func:`task_table`, by numpy (polars divides by a constant as a product
        # with its reciprocal: not always the IEEE quotient the other engines compute)
        return rows.with_columns(duration.alias("duration_us"), te.is_not_null().cast(pl.Int8).alias("event"))
    known_end = (pl.lit(True) if o.until == "encounter_end" or spec.censoring.followup == "none"
                 else (pl.col("record_end") >= wend).fill_null(False))
    keep = te.is_not_null() | (death_first & (spec.censoring.death != "exclude")) | (~death_first & known_end)
    return rows.filter(keep).with_columns(te.is_not_null().alias("boolean_value"))


def _forecast_task(p: Prepared, spec: TaskSpec, rows: pl.DataFrame) -> pl.DataFrame:
    """Target codes recorded at the first encounter that starts after prediction time (``engine._forecast``):
    carrying its id, or no id and timed within its visit span [first START, last END] over all classes."""
    import polars as pl

    o = spec.outcome
    opens = p.events.filter(p.matches(o.next_encounter) & (pl.col("enc") != "")).select(
        SID, "row", "t", pl.col("enc").alias("nenc"))
    hit = pl.col("t") > pl.col("pred")
    if o.within is not None:
        hit &= pl.col("t") <= pl.col("pred") + _us(o.within)
    hit &= pl.col("death").is_null() | (pl.col("t") <= pl.col("death"))  # not an encounter after the death
    nxt = _per_subject_pairs(rows.select(SID, "idx", "pred", "death"), opens, lambda pairs: (
        pairs.filter(hit).sort("row").group_by("idx", maintain_order=True).first()
        .select("idx", "nenc", pl.col("t").alias("nt"))))
    rows = rows.join(nxt, on="idx", how="inner")  # no next encounter in the record: censored
    visit = p.encounters.group_by(SID, "enc").agg(pl.col("st").min().alias("vs"),
                                                  pl.col("en").max().alias("ve"))
    rows = rows.join(visit.rename({"enc": "nenc"}), on=[SID, "nenc"], how="left").with_columns(
        pl.coalesce("vs", "nt").alias("vs")).with_columns(pl.coalesce("ve", "vs").alias("ve"))
    targets = p.events.filter(p.matches(o.codes)).select(SID, "t", "code", "enc")
    keys = rows.select(SID, "idx", "nenc", "vs", "ve")
    by_id = keys.join(targets.filter(pl.col("enc") != ""), left_on=[SID, "nenc"], right_on=[SID, "enc"])
    by_time = _per_subject_pairs(keys, targets.filter(pl.col("enc") == ""), lambda pairs: pairs.filter(
        (pl.col("t") >= pl.col("vs")) & (pl.col("t") <= pl.col("ve"))))
    linked = pl.concat([by_id.select("idx", "code"), by_time.select("idx", "code")])
    codes = linked.unique().sort("code").group_by("idx", maintain_order=True).agg(
        pl.col("code").alias("target_codes"))
    rows = rows.join(codes, on="idx", how="left")
    if o.allow_empty:
        return rows.with_columns(pl.col("target_codes").fill_null(pl.lit([], pl.List(pl.String))))
    return rows.filter(pl.col("target_codes").is_not_null())


def _duration_task(spec: TaskSpec, rows: pl.DataFrame) -> pl.DataFrame:
    """``outcome.encounter_duration_gt``: binary on the index encounter's END - START."""
    import polars as pl

    gt = spec.outcome.encounter_duration_gt
    assert gt is not None
    rows = rows.filter(pl.col("s").is_not_null() & pl.col("e").is_not_null())
    return rows.with_columns(((pl.col("e") - pl.col("s")) > _us(gt)).alias("boolean_value"))


def task_table(p: Prepared, spec: TaskSpec) -> pa.Table:
    """The label table of one task: LABELS_SCHEMA, one row per (subject, prediction time) -- the earliest
    kept index event wins (``engine._finish``) -- sorted by (subject_id, prediction_time)."""
    rows = _eligible(p, spec, _index_rows(p, spec))
    if spec.outcome.encounter_duration_gt is not None:
        rows = _duration_task(spec, rows)
    elif spec.kind == "forecast":
        rows = _forecast_task(p, spec, rows)
    else:
        rows = _window_task(p, spec, rows)
    rows = rows.sort("idx").unique([SID, "pred"], keep="first", maintain_order=True).sort([SID, "pred"])
    n = rows.height
    cols: list[pa.Array | pa.ChunkedArray] = []
    for f in LABELS_SCHEMA:
        if f.name == SUBJECT_ID:
            cols.append(rows.get_column(SID).to_arrow())
        elif f.name == PREDICTION_TIME:
            cols.append(rows.get_column("pred").to_arrow().cast(pa.int64()).cast(pa.timestamp("us")))
        elif f.name == "duration_days" and "duration_us" in rows.columns:
            days = rows.get_column("duration_us").to_numpy().astype(np.float64) / float(_US_PER_DAY)
            cols.append(pa.array(days, pa.float64()))
        elif f.name in rows.columns:
            cols.append(rows.get_column(f.name).to_arrow().cast(f.type))
        else:
            cols.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays([c.cast(f.type) for c, f in zip(cols, LABELS_SCHEMA, strict=True)],
                                schema=LABELS_SCHEMA)


def prepare(events: pl.LazyFrame | pl.DataFrame, specs: Sequence[TaskSpec]) -> Prepared:
    """The facts every task of ``specs`` reads, from ``events`` (the frame :func:`read_events` returns);
    label each task with :func:`task_table`."""
    return Prepared(events, specs)


def label_tables(events: pl.LazyFrame | pl.DataFrame, specs: Sequence[TaskSpec]) -> dict[str, pa.Table]:
    """``{task: label table}`` (LABELS_SCHEMA, sorted by (subject_id, prediction_time)) of ``events`` (the
    frame :func:`read_events` returns)."""
    p = prepare(events, specs)
    return {s.name: task_table(p, s) for s in specs}


def events_frame(events: pa.Table) -> pl.DataFrame:
    """An Arrow table of MEDS events (at least subject_id, time, code; encounter_id optional) in
    :func:`read_events`' form -- for tests and in-memory callers."""
    import polars as pl

    frame = pl.from_arrow(events)
    assert isinstance(frame, pl.DataFrame)
    enc = (pl.col(ENCOUNTER_ID).cast(pl.String).fill_null("") if ENCOUNTER_ID in frame.columns
           else pl.lit("", pl.String))
    return frame.select(pl.col(SUBJECT_ID).cast(pl.Int64).alias(SID),
                        pl.col(TIME).cast(pl.Datetime("us")).dt.epoch("us").alias("t"),
                        pl.col(CODE).cast(pl.String).alias("code"),
                        enc.alias("enc")).filter(pl.col("t").is_not_null())
