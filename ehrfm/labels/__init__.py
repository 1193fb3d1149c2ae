"""Label engine: task specs (``tasks/*.yaml``) -> label tables in :data:`ehrfm.schema.LABELS_SCHEMA`.

``label_subject`` is the one per-subject rule; ``label_events`` runs it over a pandas frame and
``label_dataset`` (module :mod:`ehrfm.labels.dataset`) runs it with Spark.
"""

from ehrfm.labels.direct import label_events
from ehrfm.labels.engine import label_subject, label_subject_tasks, labels_to_arrow
from ehrfm.labels.parse import available_tasks, load_task, load_tasks, parse_spec, warn_missing_codes
from ehrfm.labels.spec import TaskSpec, TaskSpecError

__all__ = [
    "TaskSpec",
    "TaskSpecError",
    "available_tasks",
    "label_events",
    "label_subject",
    "label_subject_tasks",
    "labels_to_arrow",
    "load_task",
    "load_tasks",
    "parse_spec",
    "warn_missing_codes",
]
