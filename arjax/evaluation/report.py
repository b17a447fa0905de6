"""Report files: JSON/JSONL I/O and PNG plots (matplotlib figures, no pyplot state).

This module holds the evaluation side effects (DESIGN §3.1, §6): the run's
``report.json``, reading ``metrics.jsonl`` back, and the plots the papers show
— decision boundaries on 2-D data (IMA and ARFL two-moons figures), accuracy
vs noise level (IMA), training curves. Every plotting function creates the
parent folder, closes its figure and returns the path it wrote.

In a multi-process run only process 0 writes (:func:`arjax.distributed.is_primary`):
the others return the path without touching the disk.
"""

import dataclasses
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from arjax import distributed
from arjax.evaluation.robustness import RobustCurve

PathLike = str | os.PathLike


def _to_jsonable(obj: Any) -> Any:
    """Recursively convert numpy/jax values, dataclasses and tuples to JSON types."""
    if hasattr(obj, "to_dict") and callable(obj.to_dict):
        return _to_jsonable(obj.to_dict())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, str | bool | int | float) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # numpy / jax arrays and scalars
        return np.asarray(obj).tolist()
    raise TypeError(f"write_json cannot convert {type(obj).__name__}: {obj!r:.80}")


def write_json(path: PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically (temporary file, then ``os.replace``).

    numpy/jax scalars and arrays become numbers and (nested) lists, dataclasses
    become dicts (objects with ``to_dict()``, e.g. :class:`RobustCurve`, use it),
    tuples become lists. NaN and infinity are written as Python's ``json`` does
    (``NaN``, ``Infinity``), so they read back unchanged with :mod:`json`.

    Args:
      path: destination file; parent folders are created.
      obj: the value to write.

    Returns:
      The path written.
    """
    text = json.dumps(_to_jsonable(obj), indent=2, sort_keys=False)
    return write_text(path, text + "\n")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def write_text(path: PathLike, text: str) -> Path:
    """Write ``text`` atomically: a temporary file in the same folder, then ``os.replace``.

    A reader (or a resumed run) sees the old file or the whole new one, never a part.

    Args:
      path: destination file; parent folders are created.
      text: the content.

    Returns:
      The path written (not written by a non-primary process).
    """
    path = Path(path)
    if not distributed.is_primary():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would differ from the other files
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def read_jsonl(path: PathLike) -> list[dict[str, Any]]:
    """Read a JSON-lines file such as ``metrics.jsonl``.

    Blank lines are skipped. A malformed *last* line (a write cut off by a
    crash or preemption) is dropped with a warning; a malformed line elsewhere
    raises.

    Args:
      path: the file.

    Returns:
      One dict per line, in file order.

    Raises:
      ValueError: a malformed line before the last one, naming file and line.
    """
    lines = Path(path).read_text().splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    records = []
    for j, (lineno, line) in enumerate(numbered):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if j == len(numbered) - 1:
                msg = f"{path}:{lineno}: dropping truncated last line ({err})."
                warnings.warn(msg, stacklevel=2)
                break
            raise ValueError(f"{path}:{lineno}: not valid JSON: {err}") from err
    return records


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Figure, Any]:
    """A figure and its axes (``Figure.subplots``), detached from pyplot.

    Report plots never touch pyplot's global state or select a backend, so a notebook
    that imports arjax keeps its inline figures, and nothing needs closing.
    """
    fig = Figure(figsize=kwargs.pop("figsize", None))
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _save(fig: Figure, path: PathLike) -> Path:
    path = Path(path)
    if not distributed.is_primary():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def save_figure(fig: Figure, path: PathLike) -> Path:
    """Writes ``fig`` as a PNG at ``path`` (parents created; only on the primary process)."""
    return _save(fig, path)


def plot_decision_boundary(
    predict_fn: Callable[[np.ndarray], Any],
    x: Any,
    y: Any,
    path: PathLike,
    *,
    title: str = "",
    x_adv: Any = None,
    grid_points: int = 200,
    max_points: int = 500,
) -> Path:
    """Class-1 probability over the plane, the 0.5 boundary, and the data (2-D inputs).

    The two-moons figures of IMA (Ma et al.) and ARFL (Hao et al.).

    Args:
      predict_fn: float ``[M, 2]`` numpy points -> class-1 probability ``[M]``
        (e.g. :func:`arjax.evaluation.metrics.binary_scores` of the logits).
      x: float ``[N, 2]`` test points.
      y: ``[N]`` labels in ``{0, 1}``.
      path: PNG file to write.
      title: figure title.
      x_adv: optional ``[N, 2]`` adversarial versions of ``x``; drawn as crosses
        with an arrow from each clean point.
      grid_points: grid resolution per axis.
      max_points: at most this many points are drawn (a fixed random subset).

    Returns:
      The path written.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y).reshape(-1)
    if x.ndim != 2 or x.shape[1] != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"need x [N, 2] and y [N]; got {x.shape} and {y.shape}.")
    pts = x if x_adv is None else np.concatenate([x, np.asarray(x_adv, np.float64)])
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    pad = 0.1 * np.maximum(hi - lo, 1e-3)
    g0 = np.linspace(lo[0] - pad[0], hi[0] + pad[0], grid_points)
    g1 = np.linspace(lo[1] - pad[1], hi[1] + pad[1], grid_points)
    xx, yy = np.meshgrid(g0, g1)
    grid = np.stack([xx.ravel(), yy.ravel()], axis=1).astype(np.float32)
    prob = np.asarray(predict_fn(grid), dtype=np.float64).reshape(xx.shape)

    rng = np.random.default_rng(0)
    keep = np.sort(rng.permutation(x.shape[0])[:max_points])
    fig, ax = subplots(figsize=(6, 5))
    filled = ax.contourf(xx, yy, prob, levels=np.linspace(0.0, 1.0, 21), cmap="RdBu_r", alpha=0.6)
    fig.colorbar(filled, ax=ax, label="p(class 1)")
    ax.contour(xx, yy, prob, levels=[0.5], colors="k", linewidths=1.5)
    for label, color in ((0, "tab:blue"), (1, "tab:red")):
        sel = keep[y[keep] == label]
        ax.scatter(
            x[sel, 0],
            x[sel, 1],
            s=10,
            c=color,
            edgecolors="k",
            linewidths=0.3,
            label=f"class {label}",
        )
    if x_adv is not None:
        xa = np.asarray(x_adv, dtype=np.float64)[keep]
        d = xa - x[keep]
        ax.quiver(
            x[keep, 0],
            x[keep, 1],
            d[:, 0],
            d[:, 1],
            angles="xy",
            scale_units="xy",
            scale=1.0,
            width=0.002,
            color="0.3",
        )
        ax.scatter(xa[:, 0], xa[:, 1], s=12, marker="x", c="k", linewidths=0.8, label="adversarial")
    ax.set(xlim=(g0[0], g0[-1]), ylim=(g1[0], g1[-1]), xlabel="$x_1$", ylabel="$x_2$", title=title)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def _curve_arrays(value: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if isinstance(value, RobustCurve):
        return np.asarray(value.eps, float), np.asarray(value.accuracy, float), None
    if len(value) not in (2, 3):
        raise ValueError("a curve is a RobustCurve or (eps, accuracy[, std]).")
    std = None if len(value) == 2 or value[2] is None else np.asarray(value[2], float)
    return np.asarray(value[0], float), np.asarray(value[1], float), std


def plot_accuracy_vs_eps(
    curves: Mapping[str, Any],
    path: PathLike,
    title: str = "",
    xlabel: str = "noise level ε",
    ylabel: str = "accuracy",
) -> Path:
    """Accuracy vs attack radius, one line per method (IMA's robustness figures).

    Args:
      curves: ``{method label: RobustCurve | (eps [E], accuracy [E], optional std [E])}``;
        a std (e.g. over seeds, from :func:`arjax.evaluation.mean_std`) draws error bars.
      path: PNG file to write.
      title: figure title.
      xlabel: x-axis label.
      ylabel: y-axis label (e.g. ``"auc"`` for AUC under attack).

    Returns:
      The path written.
    """
    fig, ax = subplots(figsize=(6, 4))
    for label, value in curves.items():
        eps, acc, std = _curve_arrays(value)
        if isinstance(value, RobustCurve):
            label = f"{label} (area {value.area():.3f})"
        ax.errorbar(eps, acc, yerr=std, marker="o", markersize=3, capsize=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def _panel_of(key: str) -> str:
    name = key.lower()
    if "loss" in name:
        return "loss"
    if "acc" in name or "auc" in name:
        return "accuracy"
    return "other"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def plot_training_curves(records: Sequence[Mapping[str, Any]], path: PathLike) -> Path:
    """Every scalar metric of ``metrics.jsonl`` against ``step``.

    Keys containing "loss" go to a loss panel, keys containing "acc" or "auc"
    to an accuracy panel, other numeric keys (learning rate, margins, ...) to a
    third panel; panels without keys are left out. Records without ``step`` and
    non-finite or non-numeric values are skipped.

    Args:
      records: dicts with ``"step"`` and metric keys, e.g. from :func:`read_jsonl`.
      path: PNG file to write.

    Returns:
      The path written.
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    for rec in records:
        if not _is_number(rec.get("step")):
            continue
        for key, value in rec.items():
            if key != "step" and _is_number(value):
                steps, values = series.setdefault(key, ([], []))
                steps.append(float(rec["step"]))
                values.append(float(value))
    panels = [p for p in ("loss", "accuracy", "other") if any(_panel_of(k) == p for k in series)]
    fig, axes = subplots(1, max(len(panels), 1), figsize=(5 * max(len(panels), 1), 4))
    axes = np.atleast_1d(axes)
    for ax, panel in zip(axes, panels, strict=False):
        for key, (steps, values) in series.items():
            if _panel_of(key) == panel:
                ax.plot(steps, values, marker="." if len(steps) < 50 else None, label=key)
        ax.set(xlabel="step", ylabel=panel, title=panel)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize=8)
    if not panels:
        axes[0].set(title="no numeric metrics", xlabel="step")
    return _save(fig, path)


def plot_histogram(
    values: Any, path: PathLike, *, title: str = "", xlabel: str = "", bins: int = 50
) -> Path:
    """Histogram of per-sample values, e.g. IMA's margin histogram.

    Args:
      values: float ``[N]`` (e.g. the margin table).
      path: PNG file to write.
      title: figure title.
      xlabel: x-axis label.
      bins: number of bins.

    Returns:
      The path written.
    """
    fig, ax = subplots(figsize=(6, 4))
    ax.hist(np.asarray(values, dtype=np.float64).reshape(-1), bins=bins, color="tab:blue")
    ax.set(xlabel=xlabel, ylabel="count", title=title)
    return _save(fig, path)


def plot_roc_curves(
    panels: Mapping[str, Mapping[str, tuple[Any, Any]]],
    path: PathLike,
    *,
    title: str = "",
    operating_points: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
) -> Path:
    """ROC curves, one panel per task (binary, or each class of a multi-label task).

    Each panel overlays clean data and every attack, with the AUC in the legend.

    Args:
      panels: ``{panel title: {curve label: (scores [N], labels [N] in {0, 1})}}``;
        a panel whose labels hold one value is drawn empty with a note.
      path: PNG file to write.
      title: figure title.
      operating_points: optional ``{panel: {curve label: (fpr, tpr)}}`` drawn as dots
        (e.g. the validation-chosen threshold).

    Returns:
      The path written.
    """
    import sklearn.metrics

    n = max(len(panels), 1)
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = subplots(rows, cols, figsize=(4 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.ravel()[len(panels) :]:
        ax.axis("off")
    for ax, (panel, curves) in zip(axes.ravel(), panels.items(), strict=False):
        ax.plot([0, 1], [0, 1], color="0.7", linestyle=":", linewidth=1)
        for i, (label, (scores, labels)) in enumerate(curves.items()):
            y = np.asarray(labels).reshape(-1)
            if np.unique(y).size < 2:
                ax.text(0.5, 0.5, "one label value:\nROC undefined", ha="center", va="center")
                break
            s = np.asarray(scores, np.float64).reshape(-1)
            fpr, tpr, _ = sklearn.metrics.roc_curve(y, s)
            auc = sklearn.metrics.roc_auc_score(y, s)
            (line,) = ax.plot(fpr, tpr, label=f"{label} (AUC {auc:.3f})", linewidth=1.5 - 0.1 * i)
            point = (operating_points or {}).get(panel, {}).get(label)
            if point is not None:
                ax.plot(*point, marker="o", color=line.get_color(), markersize=5)
        ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=panel, xlim=(0, 1))
        ax.set_ylim(0, 1.02)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="lower right", fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_metric_bars(
    table: Mapping[str, Mapping[str, tuple[float, float]]],
    path: PathLike,
    *,
    title: str = "",
    ylabel: str = "",
) -> Path:
    """Grouped bars with std error bars: one group per method, one bar per column.

    ARFL's Tables 1-3 as a figure (standard, adversarial and mean metric).

    Args:
      table: ``{method: {column: (mean, std)}}``; all methods have the same columns.
      path: PNG file to write.
      title: figure title.
      ylabel: y-axis label.

    Returns:
      The path written.
    """
    methods = list(table)
    columns = list(next(iter(table.values()), {}))
    width = 0.8 / max(len(columns), 1)
    fig, ax = subplots(figsize=(max(5.0, 1.4 * len(methods) * max(len(columns), 1) / 2), 4))
    x = np.arange(len(methods))
    for j, column in enumerate(columns):
        mean = np.array([table[m][column][0] for m in methods], np.float64)
        std = np.array([table[m][column][1] for m in methods], np.float64)
        offset = (j - (len(columns) - 1) / 2) * width
        ax.bar(x + offset, mean, width, yerr=std, capsize=3, label=column)
    ax.set_xticks(x, methods, rotation=20 if len(methods) > 3 else 0, ha="right")
    ax.set(ylabel=ylabel, title=title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)
