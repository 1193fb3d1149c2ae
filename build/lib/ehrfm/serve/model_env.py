"""What a registered model carries so it loads where ehrfm was never installed: the ehrfm wheel and pinned
requirements.

How the code travels (MLflow 3.x behaviour read in ``mlflow/pyfunc``, ``mlflow/models/wheeled_model.py``,
``mlflow/utils/virtualenv.py``):

- ``code_paths`` with the ehrfm *source*: MLflow copies it to ``<model>/code/`` and prepends that folder
  to ``sys.path`` at load. ehrfm's own dependencies are then not declared by anything, and in an
  environment that already imported ehrfm the copied source is silently shadowed. Rejected.
- ``mlflow.models.utils.add_libraries_to_model``: re-logs an already registered model as a second version
  after ``pip wheel -r requirements.txt`` downloads a wheel for every requirement (torch included, every
  version) for this platform only; it resolves ``ehrfm`` *by name* from an index, where it does not exist
  (or, worse, where someone else's ``ehrfm`` could). Rejected.
- Chosen: the ehrfm wheel goes in as the one ``code_paths`` entry, so it lands at
  ``<model>/code/ehrfm-<version>-py3-none-any.whl``, and ``requirements.txt`` names it by that relative
  path (the way ``WheeledModel`` names ``wheels/<file>.whl``). MLflow's virtualenv/uv environment managers
  run ``pip install -r`` from a copy of the model folder, so the path resolves; by hand it is
  ``cd <model> && pip install -r requirements.txt``. ``code/`` on ``sys.path`` is harmless: a folder
  holding only a ``.whl`` file makes nothing importable. ``code_paths`` records no source location in
  ``MLmodel`` (pyfunc ``artifacts`` would: see :mod:`ehrfm.serve.pyfunc`).

Which wheel (:func:`ehrfm_wheel`), in this order: an explicit wheel (argument or ``$EHRFM_WHEEL``; its
version must be the running ehrfm's); a source checkout (ehrfm imported from a tree with ``pyproject.toml``,
editable installs included) is built with ``pip wheel --no-deps --no-build-isolation`` from a clean copy
of the tree (an in-tree build would reuse a stale ``build/lib`` and ship deleted modules); otherwise ehrfm
runs from an installed wheel and that wheel is reassembled from the installed files listed in the
distribution's ``RECORD`` (each checked against its recorded hash, so a modified install is refused).

Requirements (:func:`pinned_requirements`): the wheel's ``Requires-Dist`` (extras excluded) and their
dependencies, recursively, each pinned ``==`` to the version installed here, the environment the model was
validated in at registration (MLflow runs the input example through the saved model). Markers are
evaluated here, so the pins describe this platform. Local version labels are dropped (``torch==2.13.0``, not
``2.13.0+cpu``), as MLflow does, so the target's index picks the CPU or CUDA build.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

import ehrfm

DIST = "ehrfm"
WHEEL_ENV = "EHRFM_WHEEL"
CODE_DIR = "code"  # where MLflow copies ``code_paths`` inside a model
_SOURCE_FILES = ("pyproject.toml", "setup.cfg", "setup.py", "README.md", "LICENSE", "MANIFEST.in")
_NOT_REPACKED = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}  # the installer's, not the wheel's


class ModelEnvError(RuntimeError):
    """The ehrfm wheel or the model's requirements cannot be produced; the message says what to do."""


def running_version() -> str:
    """Version of the ehrfm being run: ``ehrfm.__version__`` (what a wheel built from this code carries), else
    the installed distribution's."""
    version = getattr(ehrfm, "__version__", None)
    if isinstance(version, str) and version:
        return version
    try:
        return md.version(DIST)
    except md.PackageNotFoundError:
        raise ModelEnvError("cannot tell the running ehrfm's version: pass a wheel") from None


def source_tree() -> Path | None:
    """The checkout ehrfm is imported from (``<root>/ehrfm/__init__.py`` beside ``<root>/pyproject.toml``
    naming ``ehrfm``), or None when ehrfm runs from an installed wheel."""
    if not ehrfm.__file__:
        return None
    root = Path(ehrfm.__file__).resolve().parents[1]
    project = root / "pyproject.toml"
    if project.is_file() and re.search(r'^name\s*=\s*"ehrfm"', project.read_text(), re.MULTILINE):
        return root
    return None


def ehrfm_wheel(dest: str | Path, wheel: str | Path | None = None) -> Path:
    """The wheel of the running ehrfm, written into ``dest`` (see the module docstring for the order).

    ``wheel`` (or ``$EHRFM_WHEEL``): an existing ``ehrfm-<version>-*.whl``; it must be pure Python and of the
    running version (``ModelEnvError`` otherwise).
    """
    out = Path(dest)
    out.mkdir(parents=True, exist_ok=True)
    given = wheel or os.environ.get(WHEEL_ENV)
    if given:
        return _copy_given(Path(given), out)
    root = source_tree()
    return _build_from_source(root, out) if root else _rebuild_from_installed(out)


def _copy_given(path: Path, out: Path) -> Path:
    if not path.is_file():
        raise ModelEnvError(f"wheel {path} (argument or ${WHEEL_ENV}) does not exist")
    name, version, _, tags = parse_wheel_filename(path.name)
    if name != DIST or any(t.platform != "any" for t in tags):
        raise ModelEnvError(f"{path.name}: expected a pure-Python ehrfm wheel (ehrfm-<version>-py3-none-any)")
    if version != Version(running_version()):
        raise ModelEnvError(f"{path.name}: version {version} is not the running ehrfm {running_version()} "
                            "(the model is validated with the running code at registration)")
    return Path(shutil.copy(path, out / path.name))


def _build_from_source(root: Path, out: Path) -> Path:
    """``pip wheel`` of a clean copy of the project files (no ``build/``, no caches, no tests)."""
    with tempfile.TemporaryDirectory(prefix="ehrfm-wheel-src-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for name in _SOURCE_FILES:
            if (root / name).is_file():
                shutil.copy(root / name, src / name)
        shutil.copytree(root / "ehrfm", src / "ehrfm", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        built = Path(tmp) / "wheel"
        env = {**os.environ, "PIP_NO_INPUT": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
        if (root / "constraints.txt").is_file():
            env["PIP_CONSTRAINT"] = str(root / "constraints.txt")  # nothing is resolved; belt and braces
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
               "-q", "-w", str(built), str(src)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        wheels = sorted(built.glob("ehrfm-*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            raise ModelEnvError(f"building the ehrfm wheel from {root} failed (needs setuptools and wheel in "
                                f"this environment; or pass a wheel / ${WHEEL_ENV}):\n{proc.stderr[-2000:]}")
        return Path(shutil.move(str(wheels[0]), out / wheels[0].name))


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _rebuild_from_installed(out: Path) -> Path:
    """Reassemble ``ehrfm-<version>-py3-none-any.whl`` from the installed files its ``RECORD`` lists."""
    try:
        dist = md.distribution(DIST)
    except md.PackageNotFoundError:
        raise ModelEnvError("ehrfm is neither installed nor run from a source tree: pass a wheel") from None
    files = list(dist.files or [])
    metadata = [f for f in files if f.parts[0].endswith(".dist-info") and f.parts[-1] == "METADATA"]
    info = metadata[0].parts[0] if metadata else None
    if info is None or not any(f.as_posix() == "ehrfm/__init__.py" for f in files):
        raise ModelEnvError("the installed ehrfm does not hold its files (an editable install whose source "
                            f"is gone?): pass a wheel or set ${WHEEL_ENV}")
    entries: list[tuple[str, bytes]] = []
    for f in sorted(files, key=lambda p: p.as_posix()):
        parts = f.parts
        if parts[0] == ".." or "__pycache__" in parts or f.suffix == ".pyc":
            continue  # console scripts (re-created by the installer from entry_points.txt), bytecode
        if parts[0] == info and parts[-1] in _NOT_REPACKED:
            continue
        data = Path(str(dist.locate_file(f))).read_bytes()
        if f.hash is not None and _record_hash(data) != f"{f.hash.mode}={f.hash.value}":
            raise ModelEnvError(f"installed file {f} differs from its RECORD hash: reinstall ehrfm or pass "
                                "a wheel")
        entries.append((f.as_posix(), data))
    version = dist.version
    target = out / f"{DIST}-{version}-py3-none-any.whl"
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in entries] + [f"{info}/RECORD,,"]
    stamp = (1980, 1, 1, 0, 0, 0)  # fixed times: the same install gives the same bytes
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name, date_time=stamp), data)
        zf.writestr(zipfile.ZipInfo(f"{info}/RECORD", date_time=stamp), "\n".join(record) + "\n")
    return target


def wheel_requires(wheel: str | Path) -> list[Requirement]:
    """``Requires-Dist`` of a wheel's METADATA whose markers hold here without extras."""
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        headers = Parser().parsestr(zf.read(meta).decode("utf-8"))
    reqs = [Requirement(r) for r in headers.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def _requires(dist: md.Distribution, extras: frozenset[str]) -> list[Requirement]:
    reqs = [Requirement(r) for r in dist.requires or []]
    envs = [{"extra": e} for e in sorted(extras)] or [{"extra": ""}]
    return [r for r in reqs if r.marker is None or any(r.marker.evaluate(e) for e in envs)]


def pinned_requirements(roots: list[Requirement]) -> list[str]:
    """``name==version`` for ``roots`` and everything they require, recursively, as installed here (sorted,
    local version labels dropped). ``ModelEnvError`` names any required distribution that is not installed."""
    pins: dict[str, str] = {}
    done: dict[str, frozenset[str]] = {}
    missing: list[str] = []
    stack = [(r.name, frozenset(r.extras)) for r in roots]
    while stack:
        name, extras = stack.pop()
        key = canonicalize_name(name)
        if key in done and extras <= done[key]:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            missing.append(name)
            continue
        done[key] = done.get(key, frozenset()) | extras
        pins[key] = Version(dist.version).public
        stack.extend((r.name, frozenset(r.extras)) for r in _requires(dist, extras))
    if missing:
        gone = sorted(set(missing))
        raise ModelEnvError(f"cannot pin the model's requirements: not installed here: {gone}")
    return [f"{k}=={v}" for k, v in sorted(pins.items())]


def model_requirements(wheel: str | Path) -> list[str]:
    """``requirements.txt`` lines: every pin for the wheel's dependencies, then the wheel by its path inside
    the model (``code/<file>.whl``), never by the bare name ``ehrfm``."""
    return pinned_requirements(wheel_requires(wheel)) + [f"{CODE_DIR}/{Path(wheel).name}"]
