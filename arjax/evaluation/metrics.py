"""Host-side classification metrics and mean (std) aggregation over runs.

Everything here works on host arrays (numpy, or jax arrays converted with
``np.asarray``) after the jitted evaluation has produced logits: accuracy,
binary scores, ROC-AUC (ARFL, Hao et al., reports AUC; Khakzar et al. report
per-class AUC on ChestX-ray14), the Mann-Whitney U test ARFL uses to compare
methods, and the "mean (std)" over seeds or folds that all three papers print.
"""

import math
import numbers
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.special
import scipy.stats
import sklearn.metrics

from arjax.losses import predictions_correct


def _weights(mask: Any, n: int) -> np.ndarray:
    """``[n]`` float64 weights from an optional mask (None -> all ones)."""
    if mask is None:
        return np.ones(n, dtype=np.float64)
    w = np.asarray(mask, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise ValueError(f"mask has {w.shape[0]} entries for {n} examples.")
    return w


def accuracy(logits: Any, labels: Any, mask: Any = None) -> float:
    """Fraction of (unmasked) examples classified correctly.

    Correctness is :func:`arjax.losses.predictions_correct`, the same rule the
    attacks and robust evaluation use: ``argmax == label`` for softmax logits
    ``[B, K]``, ``(logit > 0) == label`` for one binary logit ``[B]``, and all
    classes right for multi-label logits ``[B, C]``.

    Args:
      logits: float ``[B, K]``, ``[B]``, ``[B, 1]`` or ``[B, C]``.
      labels: int ``[B]`` (class ids or ``{0, 1}``) or multi-hot ``[B, C]``.
      mask: optional ``[B]`` bool/0-1 weights; masked-out examples (padding)
        are ignored.

    Returns:
      The accuracy in ``[0, 1]``; NaN (with a warning) when the mask selects
      no example.
    """
    correct = np.asarray(predictions_correct(np.asarray(logits), np.asarray(labels)))
    w = _weights(mask, correct.shape[0])
    total = w.sum()
    if total <= 0:
        warnings.warn("accuracy over zero examples (empty mask) is NaN.", stacklevel=2)
        return math.nan
    return float(np.sum(w * correct) / total)


def binary_scores(logits: Any) -> np.ndarray:
    """Probability of class 1 for a binary classifier, the score ROC-AUC ranks.

    Args:
      logits: float ``[B, 2]`` softmax logits, or ``[B]`` / ``[B, 1]`` single
        binary logits.

    Returns:
      float64 ``[B]``: ``softmax(logits)[:, 1]`` or ``sigmoid(logit)``.

    Raises:
      ValueError: for any other shape (e.g. ``[B, K]`` with ``K > 2``).
    """
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim == 2 and z.shape[1] == 2:
        return scipy.special.softmax(z, axis=1)[:, 1]
    if z.ndim == 1 or (z.ndim == 2 and z.shape[1] == 1):
        return scipy.special.expit(z.reshape(-1))
    raise ValueError(f"binary_scores needs logits [B, 2], [B] or [B, 1]; got {z.shape}.")


def roc_auc(scores: Any, labels: Any, mask: Any = None) -> float:
    """Area under the ROC curve of binary scores (``sklearn.metrics.roc_auc_score``).

    Args:
      scores: float ``[B]``, higher means class 1 (see :func:`binary_scores`).
      labels: ``[B]`` in ``{0, 1}``.
      mask: optional ``[B]`` bool/0-1 mask of examples to include.

    Returns:
      The AUC in ``[0, 1]``; NaN with a warning when the selected labels hold
      only one class (the AUC is undefined then).
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    keep = _weights(mask, s.shape[0]) > 0
    s, y = s[keep], y[keep]
    classes = np.unique(y)
    if classes.size < 2:
        warnings.warn(
            f"ROC-AUC is undefined with only one class present (labels {classes.tolist()} "
            f"over {y.size} examples); returning NaN.",
            stacklevel=2,
        )
        return math.nan
    return float(sklearn.metrics.roc_auc_score(y, s))


def roc_auc_per_class(scores: Any, labels: Any, mask: Any = None) -> np.ndarray:
    """Per-class ROC-AUC for multi-label outputs (Khakzar et al., ChestX-ray14 table).

    Args:
      scores: float ``[B, C]`` per-class scores (e.g. ``sigmoid(logits)``).
      labels: multi-hot ``[B, C]``.
      mask: optional ``[B]`` example mask.

    Returns:
      float64 ``[C]``; NaN for classes with one label value, named in one warning.
    """
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 2 or s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must both be [B, C].")
    keep = _weights(mask, s.shape[0]) > 0
    skipped = single_valued_classes(y[keep])
    if skipped:
        warnings.warn(
            f"per-class ROC-AUC skips classes {skipped} (only one label value among "
            f"{int(keep.sum())} examples); their AUC is NaN.",
            stacklevel=2,
        )
    out = np.full(s.shape[1], math.nan)
    for c in range(s.shape[1]):
        if c not in skipped:
            out[c] = sklearn.metrics.roc_auc_score(y[keep, c], s[keep, c])
    return out


def single_valued_classes(labels: Any) -> list[int]:
    """Indices of the columns of multi-hot ``labels [B, C]`` that hold one value only.

    Their ROC-AUC, sensitivity or specificity is undefined (no positive or no
    negative example), so the per-class metrics skip them.
    """
    y = np.asarray(labels)
    return [c for c in range(y.shape[1]) if np.unique(y[:, c]).size < 2]


def youden_threshold(scores: Any, labels: Any) -> float:
    """Score threshold maximising Youden's J = sensitivity + specificity - 1.

    The operating point is chosen on validation data and then applied to the
    evaluated split (clean and attacked), so test labels never pick it. Uses
    ``sklearn.metrics.roc_curve``; a sample is called positive when
    ``score >= threshold``.

    Args:
      scores: float ``[N]``, higher means positive.
      labels: ``[N]`` in ``{0, 1}``.

    Returns:
      The threshold (may be ``inf``: call nothing positive); NaN when the labels
      hold one class only.
    """
    y = np.asarray(labels).reshape(-1)
    if np.unique(y).size < 2:
        return math.nan
    fpr, tpr, thresholds = sklearn.metrics.roc_curve(y, np.asarray(scores, np.float64).ravel())
    return float(thresholds[int(np.argmax(tpr - fpr))])


def sensitivity_specificity(scores: Any, labels: Any, threshold: float) -> dict[str, float]:
    """True-positive and true-negative rates when ``score >= threshold`` is called positive.

    Args:
      scores: float ``[N]``.
      labels: ``[N]`` in ``{0, 1}``.
      threshold: the operating point (e.g. :func:`youden_threshold` on validation data).

    Returns:
      ``{"sensitivity": TP / P, "specificity": TN / N}``; a rate with no
      example to count (no positive or no negative label) is NaN.
    """
    y = np.asarray(labels).reshape(-1).astype(bool)
    pred = np.asarray(scores, np.float64).reshape(-1) >= threshold
    pos, neg = int(y.sum()), int((~y).sum())
    return {
        "sensitivity": float((pred & y).sum() / pos) if pos else math.nan,
        "specificity": float((~pred & ~y).sum() / neg) if neg else math.nan,
    }


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Two-sided Mann-Whitney U test between two methods' per-run values (ARFL §4).

    Args:
      a: per-seed/per-fold values of method A, e.g. AUCs ``[n_a]``.
      b: the same for method B ``[n_b]``.

    Returns:
      ``{"statistic": U of a, "pvalue": two-sided p-value}``
      (``scipy.stats.mannwhitneyu``).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    res = scipy.stats.mannwhitneyu(a, b, alternative="two-sided")
    return {"statistic": float(res.statistic), "pvalue": float(res.pvalue)}


def mean_std(values: Iterable[Any]) -> dict[str, Any]:
    """Mean and sample standard deviation over runs (seeds or folds).

    The papers print "mean (std)" over a handful of seeds/folds; this uses the
    unbiased sample std (``ddof=1``) when there is more than one run and 0 for a
    single run. NaNs propagate (a NaN run gives a NaN mean) rather than being
    dropped silently.

    Args:
      values: ``n`` numbers, or ``n`` equally shaped arrays (e.g. per-eps
        accuracy curves), reduced over the run axis.

    Returns:
      ``{"mean": float | ndarray, "std": float | ndarray, "n": int}``; mean and std
      are NaN for ``n == 0``.
    """
    v = np.asarray([np.asarray(x, dtype=np.float64) for x in values], dtype=np.float64)
    n = int(v.shape[0]) if v.ndim else 0
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    mean = v.mean(axis=0)
    std = v.std(axis=0, ddof=1) if n > 1 else np.zeros_like(mean)
    if mean.ndim == 0:
        return {"mean": float(mean), "std": float(std), "n": n}
    return {"mean": mean, "std": std, "n": n}


def _is_numeric(value: Any) -> bool:
    if isinstance(value, bool | np.bool_):
        return False
    if isinstance(value, numbers.Real):
        return True
    arr = np.asarray(value) if hasattr(value, "shape") else None
    return arr is not None and arr.dtype.kind in "fiu"


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean (std) of every numeric metric over a list of runs.

    Args:
      runs: one metrics dict per seed/fold, e.g. ``[{"auc": 0.91, "acc": 0.88}, ...]``.
        Numeric scalars and numeric arrays (curves) are aggregated; strings,
        booleans and nested objects are skipped. A key missing from some runs is
        aggregated over the runs that have it (``n`` says how many).

    Returns:
      ``{key: mean_std(values of key)}`` in first-seen key order.
    """
    collected: dict[str, list[Any]] = {}
    for run in runs:
        for key, value in run.items():
            if _is_numeric(value):
                collected.setdefault(key, []).append(value)
    return {key: mean_std(vals) for key, vals in collected.items()}


def format_mean_std(d: Mapping[str, Any], digits: int = 1, scale: float = 1.0) -> str:
    """Format a :func:`mean_std` result as the papers do: ``"95.2 (0.4)"``.

    Args:
      d: dict with scalar ``"mean"`` and ``"std"``.
      digits: decimals for both numbers.
      scale: multiply both first (``100.0`` turns fractions into percentages).

    Returns:
      ``"<mean> (<std>)"``.
    """
    return f"{d['mean'] * scale:.{digits}f} ({d['std'] * scale:.{digits}f})"
