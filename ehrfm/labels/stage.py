"""``ehrfm label`` stage: ``run(LabelConfig, Layout) -> LabelSummary``."""

from __future__ import annotations

import json
import sys
import warnings

from ehrfm import storage
from ehrfm.atomic import Outputs, check_meds
from ehrfm.config.base import ConfigError
from ehrfm.config.label import LabelConfig, LabelSummary
from ehrfm.layout import LABEL_EXTRAS_SUFFIX, LABEL_KINDS_JSON, LABEL_SUFFIX, LABEL_SUMMARY_JSON, Layout
from ehrfm.schema import CODE, LABEL_EXTRAS, SUBJECT_ID, TIME


def run(cfg: LabelConfig, layout: Layout) -> LabelSummary:
    """Load the task specs, label ``layout.meds`` into ``layout.labels`` with ``cfg.engine`` (the local engine
    starts no Spark session), print and save the summary. Both folders may be local paths or URIs
    (``hdfs://``, ``s3a://``, ``viewfs://`` ...: :attr:`Layout.meds_uri`, :attr:`Layout.labels_uri`)."""
    from ehrfm.labels.parse import available_tasks, load_tasks
    from ehrfm.labels.spec import TaskSpecError

    try:
        specs = load_tasks(cfg.tasks or "all", cfg.tasks_dir)
    except (KeyError, TaskSpecError) as e:
        raise ConfigError(f"tasks={cfg.tasks}: {e.args[0] if e.args else e}") from e
    if not specs:
        known = ", ".join(available_tasks(cfg.tasks_dir))
        raise ConfigError(f"tasks={cfg.tasks}: no tasks selected (known: {known})")
    # local folders or URIs (ehrfm.storage): local outputs are staged and renamed into place, URIs written in
    # place with summary.json (the marker) deleted first and written last (ehrfm.atomic.Outputs)
    meds, out = layout.meds_uri, layout.labels_uri
    from ehrfm.labels.dataset import label_dataset, resolve_engine
    from ehrfm.labels.tables import label_tasks, read_kinds

    engine = resolve_engine(cfg.engine, cfg.spark.master, (meds, out))
    spark = None
    if engine != "local":  # the local engine never starts Spark (nor imports it): no JVM
        from ehrfm.spark import get_spark

        # first: the folders' filesystem is then Spark's Hadoop FileSystem (ehrfm.storage)
        spark = get_spark("ehrfm-label", master=cfg.spark.master, conf=cfg.spark.conf)
    check_meds(meds, (SUBJECT_ID, TIME, CODE))  # a named message, not an Arrow error, on a bad folder
    kinds = {s.name: s.kind for s in specs}
    # each task's MEDS label file and, for time-to-event and forecast tasks, its sidecar (ehrfm.labels.tables)
    tables = [f"{s.name}{LABEL_SUFFIX}" for s in specs]
    tables += [f"{s.name}{LABEL_EXTRAS_SUFFIX}" for s in specs if LABEL_EXTRAS[s.kind]]
    # tasks.json names the kind of every table in the folder: those of earlier runs that this one keeps too
    present = label_tasks(out)
    kept = {t: k for t, k in read_kinds(out).items() if t not in kinds and t in present}
    # the tables, sidecars and tasks.json are written under a staging folder (local) or in place (URI);
    # summary.json (the marker) goes last
    with Outputs(out, [*tables, LABEL_KINDS_JSON], LABEL_SUMMARY_JSON, overwrite=cfg.overwrite,
                 key="labels", tag="labels") as staged:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = label_dataset(spark, meds, specs, staged.path("."), progress=True, engine=engine)
        storage.write_text(staged.path(LABEL_KINDS_JSON), json.dumps({**kept, **kinds}, indent=1))
        staged.publish(summary.to_json(orient="records", indent=1))
    for s in specs:  # a sidecar of an earlier task of this name that is binary now (tasks.json says binary)
        if not LABEL_EXTRAS[s.kind]:
            storage.delete(storage.join(out, f"{s.name}{LABEL_EXTRAS_SUFFIX}"))
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    with_cols = ["task", "kind", "split", "rows", "subjects", "positives", "prevalence"]
    print(summary[with_cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"labels written to {storage.join(out, '<task>' + LABEL_SUFFIX)}")
    return LabelSummary(tasks=kinds, rows=json.loads(summary.to_json(orient="records")),
                        warnings=[str(w.message) for w in caught])
