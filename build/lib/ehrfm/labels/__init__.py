"""Label engine: task specs (``tasks/*.yaml``) -> label tables in :data:`ehrfm.schema.LABELS_SCHEMA`.

``label_subject`` is the one per-subject rule; ``label_events`` runs it over a pandas frame and
``label_dataset`` runs it with Spark. Names load lazily (PEP 562) so that ``ehrfm --help``, which imports
``ehrfm.labels.cli``, does not pay for pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ehrfm.labels.dataset import label_dataset
    from ehrfm.labels.direct import label_events, read_labels
    from ehrfm.labels.engine import label_subject, label_subject_rows, label_subject_tasks, rows_to_arrow
    from ehrfm.labels.parse import available_tasks, load_task, load_tasks, parse_spec, warn_missing_codes
    from ehrfm.labels.spec import TaskSpec, TaskSpecError

_WHERE = {
    "label_dataset": "dataset",
    "label_events": "direct",
    "read_labels": "direct",
    "label_subject": "engine",
    "label_subject_tasks": "engine",
    "label_subject_rows": "engine",
    "rows_to_arrow": "engine",
    "available_tasks": "parse",
    "load_task": "parse",
    "load_tasks": "parse",
    "parse_spec": "parse",
    "warn_missing_codes": "parse",
    "TaskSpec": "spec",
    "TaskSpecError": "spec",
}
__all__ = [
    "TaskSpec",
    "TaskSpecError",
    "available_tasks",
    "label_dataset",
    "label_events",
    "label_subject",
    "label_subject_tasks",
    "label_subject_rows",
    "load_task",
    "load_tasks",
    "parse_spec",
    "read_labels",
    "rows_to_arrow",
    "warn_missing_codes",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ehrfm.labels' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ehrfm.labels.{_WHERE[name]}"), name)
