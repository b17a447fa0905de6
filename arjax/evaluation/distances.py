"""Robustness read from per-sample minimal adversarial distances.

A minimum-norm attack (FAB, FMN: :func:`arjax.attacks.minimum_norm`) gives each example
the distance ``d_i`` to the closest adversarial input it found, in one run and without a
radius. Convention (:meth:`arjax.attacks.MinNormResult.min_distance`): ``d_i = 0`` for an
example misclassified without attack, ``d_i = inf`` where no adversarial input was found.
An example is then robust at radius ``eps`` exactly when ``d_i > eps`` (an adversarial
input at distance ``eps`` lies inside the closed ball), so

    accuracy(eps) = #{i : d_i > eps} / N,

a nonincreasing function of ``eps`` known at every radius at once: accuracy(0) is the
clean accuracy and the curve is an upper bound on the true robust accuracy, as a
fixed-radius attack's is (the attack may miss closer adversarials). This module is pure
numpy: the curve on any grid (:func:`distance_curve`, a
:class:`arjax.evaluation.robustness.RobustCurve` like the fixed-radius ones), the
distribution summary for ``report.json`` (:func:`distance_summary`: median, quantiles,
the fractions at 0 and at infinity). The figures are in
:mod:`arjax.evaluation.distance_plots`.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from arjax.evaluation.robustness import RobustCurve

DEFAULT_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def check_distances(distances: Any) -> np.ndarray:
    """Per-sample distances as float64 ``[N]``, checked.

    Args:
      distances: ``[N]`` values in ``[0, inf]`` (``inf``: never broken).

    Returns:
      float64 ``[N]``.

    Raises:
      ValueError: not one-dimensional, empty, NaN or negative entries.
    """
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"distances must be a non-empty [N] array; got shape {d.shape}.")
    if np.isnan(d).any() or (d < 0).any():
        raise ValueError("distances must be >= 0 (inf for never broken); got NaN or < 0.")
    return d


def robust_accuracy_from_distances(distances: Any, eps: Sequence[float]) -> np.ndarray:
    """``accuracy(eps) = mean(d > eps)`` at each radius.

    Args:
      distances: ``[N]`` minimal distances (0: misclassified clean, inf: never broken).
      eps: ``E`` radii ``>= 0``, any order.

    Returns:
      float64 ``[E]`` in ``[0, 1]``.
    """
    d = check_distances(distances)
    e = np.asarray(eps, dtype=np.float64).reshape(-1)
    if e.size == 0 or np.isnan(e).any() or (e < 0).any():
        raise ValueError(f"eps must be a non-empty sequence of radii >= 0; got {list(e)}.")
    return (d[None, :] > e[:, None]).mean(axis=1)


def distance_curve(
    distances: Any, eps: Sequence[float], norm: str, *, attack: str = "min-norm"
) -> RobustCurve:
    """The robust-accuracy-vs-radius curve a minimum-norm attack implies, on a grid.

    Args:
      distances: ``[N]`` minimal distances in ``norm``.
      eps: the radii ``E`` of the grid (e.g. a fixed-radius curve's, to compare).
      norm: ``"linf"``, ``"l2"`` or ``"l1"`` (recorded only).
      attack: the key of ``per_loss`` (e.g. ``"fab"``).

    Returns:
      :class:`RobustCurve` with ``accuracy = per_loss[attack]`` at ``eps`` and
      ``clean_accuracy = mean(d > 0)``.
    """
    acc = robust_accuracy_from_distances(distances, eps)
    clean = float(robust_accuracy_from_distances(distances, [0.0])[0])
    eps_t = tuple(float(e) for e in np.asarray(eps, dtype=np.float64).reshape(-1))
    return RobustCurve(eps=eps_t, accuracy=acc, per_loss={attack: acc.copy()},
                       clean_accuracy=clean, norm=norm)  # fmt: skip


def survival_steps(distances: Any, eps_max: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The exact curve as a step function: ``(eps [S], accuracy [S])`` for ``where="post"``.

    Args:
      distances: ``[N]`` minimal distances.
      eps_max: extend the last step to here; default the largest finite distance.

    Returns:
      ``eps`` starting at 0 with every distinct finite positive distance up to
      ``eps_max`` (and ``eps_max``), and the accuracy from each one to the next.
    """
    d = check_distances(distances)
    finite = np.unique(d[np.isfinite(d) & (d > 0)])
    if eps_max is None:
        eps_max = float(finite[-1]) if finite.size else 0.0
    points = np.concatenate([[0.0], finite[finite < eps_max], [eps_max]])
    return points, robust_accuracy_from_distances(d, points)


def _quantile(d: np.ndarray, q: float) -> float:
    # inverted CDF: an actual sample value, so infinite tails never give inf - inf = NaN
    return float(np.quantile(d, q, method="inverted_cdf"))


def distance_summary(
    distances: Any, norm: str, quantiles: Sequence[float] = DEFAULT_QUANTILES
) -> dict[str, Any]:
    """The distribution of the minimal distances, for ``report.json``.

    Quantiles are over all ``N`` examples (0 for the misclassified, ``inf`` for those never
    broken), each an observed distance (inverted CDF, no interpolation), so "the median
    example needs a perturbation of at least ``median`` to be broken" reads directly.

    Args:
      distances: ``[N]`` minimal distances in ``norm``.
      norm: recorded.
      quantiles: levels in ``[0, 1]``.

    Returns:
      ``{"norm", "n", "clean_accuracy", "never_broken" (fraction at inf),
      "median", "quantiles" {level: distance}, "mean_broken" (mean over the examples
      broken at a positive distance, or None)}``; infinite quantiles stay ``inf``
      (written as ``Infinity`` by :func:`arjax.evaluation.report.write_json`).
    """
    d = check_distances(distances)
    broken = d[np.isfinite(d) & (d > 0)]
    return {
        "norm": norm,
        "n": int(d.size),
        "clean_accuracy": float(np.mean(d > 0)),
        "never_broken": float(np.mean(np.isinf(d))),
        "median": _quantile(d, 0.5),
        "quantiles": {f"{q:g}": _quantile(d, q) for q in quantiles},
        "mean_broken": float(broken.mean()) if broken.size else None,
    }
