"""The 95th-percentile Hausdorff distance (HD95) between segmentation masks, on the host.

HD95 is the boundary metric the segmentation literature reports next to Dice (e.g. the
Medical Segmentation Decathlon and BraTS). arjax computes it as MONAI does
(``monai.metrics.compute_hausdorff_distance(percentile=95)``, ``get_mask_edges``,
``get_surface_distance``):

1. the surface of a binary mask is the mask minus its binary erosion with the
   cross-shaped (connectivity-1) structuring element, the outside counting as background
   (``scipy.ndimage.binary_erosion``; a one-pixel-wide object is all surface);
2. the directed distances from every surface pixel of A to the nearest surface pixel of
   B are read from ``scipy.ndimage.distance_transform_edt`` of B's non-surface
   (Euclidean, in pixels, or in the units of ``spacing``);
3. ``HD95 = max(P95(d(pred -> gt)), P95(d(gt -> pred)))``, ``P95`` the 95th percentile
   with linear interpolation (``torch.quantile`` / ``np.percentile``).

MedPy's ``hd95`` takes the percentile of the two directed sets pooled instead; the two
agree when the sets are symmetric and differ on lopsided errors. The per-class values of
a sample are its foreground classes ``1 .. C - 1`` (class 0 the background).

**Empty masks** (a class absent from the prediction, the ground truth, or both) have no
surface to measure. Two conventions are implemented (``empty``):

* ``"brats"`` (default): both empty -> 0 (nothing to find and nothing found, the same
  reading as Dice = 1 in :mod:`arjax.losses.segmentation`); exactly one empty -> the
  image diagonal ``sqrt(sum_d (n_d * spacing_d)^2)``, the largest possible distance (the
  BraTS challenge's rule, 373.13 mm for its 240 x 240 x 155 volumes). Every value is
  finite, so means over samples and classes are defined;
* ``"monai"``: both empty -> NaN, exactly one empty -> inf, as MONAI returns them
  (MONAI's mean then skips the NaNs and an inf makes the mean inf).
"""

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

EMPTY_RULES = ("brats", "monai")
PERCENTILE = 95.0


def mask_surface(mask: np.ndarray) -> np.ndarray:
    """Surface pixels of a boolean mask ``[*S]``: the mask minus its connectivity-1 erosion."""
    mask = np.asarray(mask, bool)
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def directed_surface_distances(
    src: np.ndarray, dst: np.ndarray, spacing: Sequence[float] | None = None
) -> np.ndarray:
    """Distance from each surface pixel of ``src`` to the nearest surface pixel of ``dst``.

    Args:
      src: boolean mask ``[*S]`` with at least one pixel.
      dst: boolean mask ``[*S]`` with at least one pixel.
      spacing: pixel size per axis (default 1).

    Returns:
      float64 ``[number of src surface pixels]``.
    """
    to_dst = ndimage.distance_transform_edt(~mask_surface(dst), sampling=spacing)
    return to_dst[mask_surface(src)]


def hausdorff_percentile(
    pred: np.ndarray,
    gt: np.ndarray,
    *,
    percentile: float = PERCENTILE,
    spacing: Sequence[float] | None = None,
    empty: str = "brats",
) -> float:
    """Symmetric percentile Hausdorff distance between two binary masks (HD95 by default).

    Args:
      pred: boolean ``[*S]`` predicted mask.
      gt: boolean ``[*S]`` ground-truth mask.
      percentile: in ``[0, 100]`` (100 is the Hausdorff distance).
      spacing: pixel size per axis (default 1: distances in pixels).
      empty: ``"brats"`` or ``"monai"``, the empty-mask rule of the module docstring.

    Returns:
      ``max(P(d(pred -> gt)), P(d(gt -> pred)))``.
    """
    if empty not in EMPTY_RULES:
        raise ValueError(f"unknown empty-mask rule {empty!r}; valid choices: {EMPTY_RULES}")
    pred, gt = np.asarray(pred, bool), np.asarray(gt, bool)
    if pred.shape != gt.shape:
        raise ValueError(f"masks must have one shape, got {pred.shape} and {gt.shape}")
    has_pred, has_gt = pred.any(), gt.any()
    if not (has_pred and has_gt):
        if empty == "monai":
            return float("nan") if has_pred == has_gt else float("inf")
        if has_pred == has_gt:
            return 0.0
        sides = np.asarray(pred.shape, np.float64) * (1.0 if spacing is None else spacing)
        return float(np.sqrt(np.sum(sides**2)))
    return float(
        max(
            np.percentile(directed_surface_distances(pred, gt, spacing), percentile),
            np.percentile(directed_surface_distances(gt, pred, spacing), percentile),
        )
    )


def hd95_per_class(
    pred: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    spacing: Sequence[float] | None = None,
    empty: str = "brats",
) -> np.ndarray:
    """HD95 of every sample and foreground class of integer masks.

    Args:
      pred: int ``[N, *S]`` predicted class ids (the argmax of the logits).
      labels: int ``[N, *S]`` ground-truth class ids in ``[0, num_classes)``.
      num_classes: ``C`` (class 0 the background).
      spacing: pixel size per axis (default 1).
      empty: the empty-mask rule (module docstring).

    Returns:
      float64 ``[N, C - 1]`` (class c at column ``c - 1``).
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape:
        raise ValueError(f"hd95: predictions {pred.shape} and masks {labels.shape} differ")
    out = np.empty((pred.shape[0], num_classes - 1))
    for i in range(pred.shape[0]):
        for c in range(1, num_classes):
            out[i, c - 1] = hausdorff_percentile(
                pred[i] == c, labels[i] == c, spacing=spacing, empty=empty
            )
    return out


def hd95_summary(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """Report fields ``hd95`` and ``hd95_per_class`` (pixels, ``"brats"`` empty-mask rule).

    ``hd95_per_class``: the mean over samples per foreground class; ``hd95``: their mean.
    """
    per_class = hd95_per_class(pred, labels, num_classes).mean(axis=0)
    return {"hd95": float(per_class.mean()), "hd95_per_class": [float(v) for v in per_class]}
