"""Figures of minimal adversarial distances (:mod:`arjax.evaluation.distances`).

Two report figures, in the style of :func:`arjax.evaluation.report.plot_accuracy_vs_eps`
(6 x 4 inches, light grid, small legend): the histogram of the per-sample distances, and
the robust-accuracy curves a minimum-norm attack implies, drawn as exact step functions
next to the fixed-radius curves (markers at the radii that were attacked). Each function
creates the parent folder, writes only on the primary process and returns the path.
"""

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from arjax.evaluation.distances import check_distances, survival_steps
from arjax.evaluation.report import _curve_arrays, save_figure, subplots
from arjax.evaluation.robustness import RobustCurve

PathLike = str | os.PathLike
NORM_SYMBOL = {"linf": "ℓ∞", "l2": "ℓ2", "l1": "ℓ1"}


def plot_distance_histogram(
    distances: Any, path: PathLike, *, norm: str, title: str = "", bins: int = 40
) -> os.PathLike:
    """Histogram of the finite positive minimal distances, with the median marked.

    Examples misclassified without attack (distance 0) and never broken (``inf``) have no
    bar; their counts are written in the legend.

    Args:
      distances: ``[N]`` minimal distances (0 and ``inf`` allowed).
      path: PNG file to write.
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (axis label).
      title: figure title.
      bins: number of bins.

    Returns:
      The path written.
    """
    d = check_distances(distances)
    broken = d[np.isfinite(d) & (d > 0)]
    fig, ax = subplots(figsize=(6, 4))
    label = f"broken at d > 0: {broken.size}"
    ax.hist(broken, bins=bins, color="tab:blue", label=label)
    median = float(np.quantile(d, 0.5, method="inverted_cdf"))
    if np.isfinite(median) and median > 0:
        ax.axvline(median, color="tab:red", linestyle="--", label=f"median {median:.4g}")
    ax.plot([], [], " ", label=f"misclassified clean (d = 0): {int(np.sum(d == 0))}")
    ax.plot([], [], " ", label=f"never broken (d = ∞): {int(np.sum(np.isinf(d)))}")
    symbol = NORM_SYMBOL.get(norm, norm)
    ax.set(xlabel=f"minimal adversarial {symbol} distance", ylabel="count", title=title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)


def plot_curves_with_distances(
    curves: Mapping[str, Any],
    distances: Mapping[str, Any],
    path: PathLike,
    *,
    title: str = "",
    xlabel: str = "noise level ε",
    eps_max: float | None = None,
) -> os.PathLike:
    """Fixed-radius robust-accuracy curves and the curves implied by minimal distances.

    Args:
      curves: ``{label: RobustCurve | (eps, accuracy[, std])}``, as
        :func:`arjax.evaluation.report.plot_accuracy_vs_eps` takes (markers at the radii
        attacked); may be empty.
      distances: ``{label: [N] minimal distances}``, each drawn as its exact step curve.
      path: PNG file to write.
      title: figure title.
      xlabel: x-axis label.
      eps_max: right end of the x-axis; default the largest radius of ``curves``, else the
        largest finite distance.

    Returns:
      The path written.
    """
    if eps_max is None:
        radii = [max(v.eps if isinstance(v, RobustCurve) else v[0]) for v in curves.values()]
        finite = [
            float(np.max(d[np.isfinite(d)]))
            for d in map(check_distances, distances.values())
            if np.isfinite(d).any()
        ]
        eps_max = float(max(radii)) if radii else max(finite, default=1.0)
    fig, ax = subplots(figsize=(6, 4))
    for label, value in distances.items():
        eps, acc = survival_steps(value, eps_max)
        ax.step(eps, acc, where="post", linewidth=1.5, label=f"{label} (from distances)")
    for label, value in curves.items():  # as plot_accuracy_vs_eps draws them
        eps, acc, std = _curve_arrays(value)
        if isinstance(value, RobustCurve):
            label = f"{label} (area {value.area():.3f})"
        ax.errorbar(eps, acc, yerr=std, marker="o", markersize=3, capsize=3, label=label)
    ax.set(xlabel=xlabel, ylabel="accuracy", title=title, xlim=(0.0, eps_max))
    ax.grid(True, alpha=0.3)
    if curves or distances:
        ax.legend(loc="best", fontsize=8)
    return save_figure(fig, path)
