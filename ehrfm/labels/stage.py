"""``ehrfm label`` stage: ``run(LabelConfig, Layout) -> LabelSummary``."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from ehrfm.atomic import Outputs, check_meds
from ehrfm.config.base import ConfigError
from ehrfm.config.label import LabelConfig, LabelSummary
from ehrfm.layout import Layout
from ehrfm.schema import CODE, LABEL_EXTRAS, SUBJECT_ID, TIME


def run(cfg: LabelConfig, layout: Layout) -> LabelSummary:
    """Load the task specs, label ``layout.meds`` into ``layout.labels`` with ``cfg.engine`` (the local engine
    starts no Spark session), print and save the summary."""
    from ehrfm.labels.parse import available_tasks, load_tasks
    from ehrfm.labels.spec import TaskSpecError

    try:
        specs = load_tasks(cfg.tasks or "all", cfg.tasks_dir)
    except (KeyError, TaskSpecError) as e:
        raise ConfigError(f"tasks={cfg.tasks}: {e.args[0] if e.args else e}") from e
    if not specs:
        known = ", ".join(available_tasks(cfg.tasks_dir))
        raise ConfigError(f"tasks={cfg.tasks}: no tasks selected (known: {known})")
    meds = layout.meds_paths
    check_meds(meds.root, (SUBJECT_ID, TIME, CODE))  # a named message, not an Arrow error, on a bad folder
    from ehrfm.labels.dataset import label_dataset, resolve_engine
    from ehrfm.labels.tables import read_kinds

    engine = resolve_engine(cfg.engine, cfg.spark.master)
    spark = None
    if engine != "local":  # the local engine never starts Spark (nor imports it): no JVM
        from ehrfm.spark import get_spark

        spark = get_spark("ehrfm-label", master=cfg.spark.master, conf=cfg.spark.conf)
    out = layout.labels_dir
    kinds = {s.name: s.kind for s in specs}
    # each task's MEDS label file and, for time-to-event and forecast tasks, its sidecar (ehrfm.labels.tables)
    tables = [layout.label_table(s.name).name for s in specs]
    tables += [layout.label_extras(s.name).name for s in specs if LABEL_EXTRAS[s.kind]]
    # tasks.json names the kind of every table in the folder: those of earlier runs that this one keeps too
    kept = {t: k for t, k in read_kinds(out).items() if t not in kinds and t in layout.label_tasks()}
    # the tables, sidecars and tasks.json are written under a staging folder; summary.json (the marker) goes
    # last
    with Outputs(out, [*tables, layout.label_kinds.name], layout.label_summary.name, overwrite=cfg.overwrite,
                 key="labels", tag="labels") as staged:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            summary = label_dataset(spark, meds.root, specs, staged.staging, progress=True, engine=engine)
        Path(staged.path(layout.label_kinds.name)).write_text(json.dumps({**kept, **kinds}, indent=1))
        staged.publish(summary.to_json(orient="records", indent=1))
    for s in specs:  # a sidecar of an earlier task of this name that is binary now (tasks.json says binary)
        if not LABEL_EXTRAS[s.kind]:
            layout.label_extras(s.name).unlink(missing_ok=True)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    with_cols = ["task", "kind", "split", "rows", "subjects", "positives", "prevalence"]
    print(summary[with_cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"labels written to {layout.label_table('<task>')}")
    return LabelSummary(tasks=kinds, rows=json.loads(summary.to_json(orient="records")),
                        warnings=[str(w.message) for w in caught])
