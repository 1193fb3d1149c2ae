"""Package data, read with :mod:`importlib.resources` so it works from an installed wheel, not just a
checkout.

- presets: ``ehrfm/presets/<kind>/<name>.yaml`` (kinds ``model``, ``pretrain``, ``finetune``);
- task specifications: ``ehrfm/tasks/*.yaml`` (the language is documented in ``ehrfm/tasks/README.md``).

A user's own files still work by path: every loader that takes a preset or a tasks folder accepts a path.
``$EHRFM_CONFIG_DIR`` (a folder with ``model/``, ``pretrain/``, ``finetune/``) and ``$EHRFM_TASKS_DIR``
replace
the packaged folders wholesale.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

PRESET_KINDS = ("model", "pretrain", "finetune")


@functools.cache
def _package_dir(package: str) -> Path:
    """A package's data folder on disk. Installed wheels are plain files; when ehrfm is imported from a zip
    (``spark-submit --py-files ehrfm.zip``) the folder is copied once per process into a temp folder."""
    root = resources.files(package)
    path = Path(str(root))
    if path.is_dir():
        return path
    out = Path(tempfile.mkdtemp(prefix=f"ehrfm-{package.replace('.', '-')}-"))
    # removed when the process exits (each spark-submit driver and Python worker made one and left it behind)
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    _copy_tree(root, out)
    return out


def _copy_tree(node: Traversable, dest: Path) -> None:
    for child in node.iterdir():
        if child.is_dir():
            (dest / child.name).mkdir()
            _copy_tree(child, dest / child.name)
        elif not child.name.endswith((".pyc", ".py")):
            (dest / child.name).write_bytes(child.read_bytes())


def presets_dir() -> Path:
    """Folder holding ``model/``, ``pretrain/``, ``finetune/`` presets (``$EHRFM_CONFIG_DIR`` or the
    package's)."""
    env = os.environ.get("EHRFM_CONFIG_DIR")
    return Path(env) if env else _package_dir("ehrfm.presets")


def tasks_dir() -> Path:
    """Folder of the task specifications (``$EHRFM_TASKS_DIR`` or the package's ``ehrfm/tasks``)."""
    env = os.environ.get("EHRFM_TASKS_DIR")
    return Path(env) if env else _package_dir("ehrfm.tasks")


def available_presets(kind: str) -> list[str]:
    """Names of the presets of one kind (``model``, ``pretrain``, ``finetune``)."""
    if kind not in PRESET_KINDS:
        raise ValueError(f"preset kind {kind!r}: must be one of {PRESET_KINDS}")
    return sorted(p.stem for p in (presets_dir() / kind).glob("*.yaml"))


def preset_path(kind: str, preset: str | Path) -> Path:
    """A preset's YAML file: a name (``tiny``) of the packaged presets of ``kind``, or a path to a YAML
    file."""
    path = Path(preset)
    if path.suffix in (".yaml", ".yml", ".json") or path.parent != Path("."):
        if not path.exists():
            raise FileNotFoundError(f"{kind} config file {str(preset)!r} not found")
        return path
    found = presets_dir() / kind / f"{preset}.yaml"
    if not found.exists():
        raise FileNotFoundError(
            f"{kind} preset {str(preset)!r} not found (packaged presets: {available_presets(kind)}; or give "
            "a YAML path)"
        )
    return found
