"""PNG plots for reports (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> Path:
    """Observed rate vs mean predicted probability per equal-mass bin, one line per model."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for name, (mean_p, obs) in curves.items():
        ax.plot(mean_p, obs, "o:" if name.endswith("(before calibration)") else "o-", ms=4, label=name)
    ax.set(xlabel="mean predicted probability", ylabel="observed rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(fontsize=8)
    return _save(fig, path)


def reliability_panels(panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], title: str,
                       path: Path) -> Path:
    """One small reliability diagram per panel (e.g. per subgroup), each with its named curves (e.g. before
    and after calibration); axes end at the largest probability shown, so low-risk groups stay readable."""
    n = len(panels)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, curves) in zip(axes.flat, panels.items(), strict=False):
        top = max([1e-3, *(float(np.max(np.concatenate([c[0], c[1]]))) for c in curves.values())]) * 1.05
        top = min(top, 1.0)
        ax.plot([0, top], [0, top], "k--", lw=1)
        for label, (mean_p, obs) in curves.items():
            ax.plot(mean_p, obs, "o:" if label.startswith("before") else "o-", ms=3, label=label)
        ax.set(title=name, xlim=(0, top), ylim=(0, top))
        ax.title.set_fontsize(8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def roc_plot(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> Path:
    """ROC curves (fpr, tpr), one per model."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    for name, (fpr, tpr) in curves.items():
        ax.plot(fpr, tpr, label=name)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def km_vs_predicted(
    km: tuple[np.ndarray, np.ndarray], predicted: dict[str, tuple[np.ndarray, np.ndarray]], title: str,
    path: Path,
) -> Path:
    """Kaplan–Meier of the evaluated rows (step) vs each model's mean predicted survival on its grid."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(np.concatenate([[0], km[0]]), np.concatenate([[1], km[1]]), where="post", color="k",
            label="Kaplan–Meier")
    for name, (grid, mean_s) in predicted.items():
        ax.step(np.concatenate([[0], grid]), np.concatenate([[1], mean_s]), where="post",
                label=f"{name} (mean)")
    ax.set(xlabel="days since prediction time", ylabel="survival", title=title, ylim=(0, 1.02))
    ax.legend(fontsize=8)
    return _save(fig, path)
