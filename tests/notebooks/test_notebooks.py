"""Execute every numbered notebook top to bottom (nbclient, kernel ``python3`` of this venv) on a tiny
shared pipeline run, and check a few of their outputs: no errors, figures drawn, tables with the expected
columns. The pipeline step runs once per session (cached in a temp folder shared through EHRFM_NB_* env vars).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["01_quickstart", "02_cohort_and_timelines", "03_representations", "04_evaluation", "05_survival",
            "06_explanations"]
TINY = {  # ~200 patients, a few training steps, small embedding/bootstrap sizes
    "EHRFM_NB_PATIENTS": "200", "EHRFM_NB_PRETRAIN_STEPS": "3", "EHRFM_NB_FINETUNE_STEPS": "3",
    "EHRFM_NB_EMBED_ROWS": "60", "EHRFM_NB_EMBED_LEN": "128", "EHRFM_NB_BOOTSTRAP": "20",
    "EHRFM_NB_BASELINES": "lr", "EHRFM_NB_EXPLAIN_ROWS": "8",
    "EHRFM_SPARK_MASTER": "local[2]",
}

pytestmark = [pytest.mark.slow, pytest.mark.spark]


@pytest.fixture(scope="session")
def nb_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Tiny pipeline output built once; the env vars that point the notebooks at it (set for the session)."""
    from ehrfm.notebook import pipeline

    env = {**TINY,
           "EHRFM_NB_WORKDIR": os.environ.get("EHRFM_NB_TEST_WORKDIR") or str(tmp_path_factory.mktemp("nb"))}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        pipeline.ensure_pipeline(pipeline.Settings.from_env(), echo=None)
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_kernel() -> None:
    """The notebooks run on the ``python3`` kernel; it must be this interpreter (the venv), not a system
    one."""
    import sys

    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.fail(f"no 'python3' Jupyter kernel: run `{sys.executable} -m ipykernel install --sys-prefix "
                    "--name python3`")
    exe = spec.argv[0]
    if exe not in ("python", "python3",
                   sys.executable) and Path(exe).resolve() != Path(sys.executable).resolve():
        pytest.fail(f"the 'python3' kernel runs {exe}, not this venv's {sys.executable}: "
                    f"run `{sys.executable} -m ipykernel install --sys-prefix --name python3`")


def _execute(path: Path) -> nbformat.NotebookNode:
    _check_kernel()
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the cell on the first error
    return nb


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def _figures(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for o in _outputs(nb))


def _html_tables(nb: nbformat.NotebookNode) -> list[str]:
    return [o["data"]["text/html"] for o in _outputs(nb) if "text/html" in o.get("data", {})]


def _has_table_with(nb: nbformat.NotebookNode, columns: list[str]) -> bool:
    """Some rendered DataFrame has every one of ``columns`` in its header row."""
    for html in _html_tables(nb):
        head = re.search(r"<thead>(.*?)</thead>", html, re.S)
        cols = set(re.findall(r"<th[^>]*>([^<]*)</th>", head.group(1))) if head else set()
        if set(columns) <= cols:
            return True
    return False


def test_notebooks_are_numbered_and_stripped() -> None:
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    for p in NOTEBOOKS:
        nb = nbformat.read(p, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
                 and (c.outputs or c.execution_count)]
        assert not dirty, f"{p.name}: cells {dirty} have stored outputs; strip them before committing"


# what each notebook must show beyond running without errors: (min figures, tables' required columns)
CHECKS: dict[str, tuple[int, list[list[str]]]] = {
    "01_quickstart": (0, [["step", "status", "seconds"], ["task", "rows"]]),
    "02_cohort_and_timelines": (3,
                                [["position", "token", "type", "age_years", "date", "visit_order",
                                  "visit_segment"],
                                     ["split", "len_mean", "visits_mean"],
                                     ["task", "kind", "split", "prevalence"]]),
    "03_representations": (3, [["subject_id", "length", "visits", "outcome", "outlier_score"]]),
    "04_evaluation": (1,
                      [["task", "model", "auroc", "auprc", "brier", "ece"],
                       ["attribute", "group", "n", "tiny"]]),
    "05_survival": (3, [["task", "model", "harrell_c", "harrell_c_direct"]]),
    "06_explanations": (3, [["rank", "code", "time", "value", "unit", "attribution", "text"],
                            ["visit", "start", "end", "events", "attribution", "top"],
                            ["code", "kind", "mean_abs", "ci_low", "ci_high", "mean_signed", "share_rows"]]),
}


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs(name: str, nb_env: dict[str, str]) -> None:
    nb = _execute(REPO / "notebooks" / f"{name}.ipynb")
    min_figs, tables = CHECKS[name]
    assert _figures(nb) >= min_figs, f"{name}: {_figures(nb)} figures, expected at least {min_figs}"
    for cols in tables:
        assert _has_table_with(nb, cols), f"{name}: no table with columns {cols}"
    text = "".join(o.get("text", "") for o in _outputs(nb))
    if name == "01_quickstart":
        assert "mlflow ui --backend-store-uri sqlite:///" in text
    if name == "06_explanations":  # the completeness check is shown, and it held
        err = re.search(r"relative error ([0-9.e+-]+)", text)
        assert err is not None and float(err.group(1)) <= 0.01, text[-2000:]
    # finetune ran in the tiny pipeline: the model is evaluated too
    if name in ("04_evaluation", "05_survival"):
        assert "no finetuned predictions" not in text
        assert any("baseline_" in h and "ehrfm" in h for h in _html_tables(nb)), (f"{name}: model and "
                                                                                  "baselines side by side")
