"""Per-example segmentation losses and Dice metrics (nnU-Net's loss, IMA's Eq. 9-10).

A segmentation head emits logits ``[B, H, W, C]`` (``C >= 2`` classes, class 0 the
background) for integer masks ``[B, H, W]`` with values in ``[0, C)``. Every function
returns one value per example (``[B]``, or ``[B, C - 1]`` per foreground class); the
caller reduces (DESIGN §3.5).

* :func:`dice_ce_loss`: nnU-Net's training loss (Isensee et al. 2021): the pixel-mean
  cross-entropy plus ``1 -`` the soft Dice over the foreground classes (nnU-Net's
  ``SoftDiceLoss`` with ``do_bg=False``, ``smooth=1e-5``), per example.
* :func:`pixel_cross_entropy`, :func:`pixel_margin`: what an attack maximises on a
  segmentation head (``"ce"`` and ``"margin"`` of :mod:`arjax.attacks.objectives`),
  averaged over the pixels of each example.
* :func:`confusion_counts`, :func:`hard_dice`, :func:`dice_score`: hard Dice per class and
  per example from the argmax prediction; :func:`segmentation_correct` is IMA's rule for
  segmentation (Ma et al., "Experiments on Segmentation"): a sample is "correct" when its
  Dice is at least a threshold, 0.6 in the paper (:data:`DICE_THRESHOLD`).
* :func:`tvdi`, :func:`adi`: the paper's Total Voxel Dice Index (Eq. 9) and Average Dice
  Index (Eq. 10) from per-sample counts.

Empty classes: a class absent from both the mask and the prediction of a sample has
``2 TP + FP + FN = 0``; its Dice is taken as 1 (nothing to find, nothing wrongly found).
The paper does not say; this keeps slices without foreground (most MSD slices) from being
"misclassified" by a perfect empty prediction. Eq. 9 sums over samples first, so TVDI is
undefined only when the whole set has no foreground and no false positive; it is then 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from arjax.types import Array

# IMA's "correct" rule for segmentation: Dice >= 0.6 (Ma et al., Experiments on Segmentation).
DICE_THRESHOLD = 0.6
# nnU-Net's SoftDiceLoss smoothing term.
SOFT_DICE_SMOOTH = 1e-5


def check_segmentation_shapes(logits: Array, labels: Array, where: str = "segmentation") -> int:
    """Checks ``logits [B, *S, C]`` against integer masks ``[B, *S]``; returns ``C``.

    Raises:
      ValueError: naming both shapes when they do not pair up.
    """
    lshape, yshape = tuple(jnp.shape(logits)), tuple(jnp.shape(labels))
    if len(lshape) < 3 or lshape[:-1] != yshape or lshape[-1] < 2:
        raise ValueError(
            f"{where}: logits {lshape} and masks {yshape} must be [B, *spatial, C >= 2] "
            "and [B, *spatial]"
        )
    return lshape[-1]


def _flat(values: Array) -> Array:
    """``[B, *S, ...]`` -> ``[B, prod(S), ...]`` keeping the batch and channel axes."""
    return values.reshape(values.shape[0], -1, *values.shape[-1:])


def pixel_cross_entropy(logits: Array, labels: Array) -> Array:
    """Softmax cross-entropy averaged over the pixels of each example.

    Args:
      logits: float ``[B, H, W, C]``.
      labels: int ``[B, H, W]`` class ids in ``[0, C)``.

    Returns:
      float ``[B]``: ``mean_pixels -log softmax(z)[y]``.
    """
    check_segmentation_shapes(logits, labels)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return ce.reshape(ce.shape[0], -1).mean(axis=-1)


def pixel_margin(logits: Array, labels: Array) -> Array:
    """The Carlini-Wagner logit margin ``max_{j != y} z_j - z_y`` averaged over pixels.

    Args:
      logits: float ``[B, H, W, C]``.
      labels: int ``[B, H, W]``.

    Returns:
      float ``[B]``; a pixel's margin is positive exactly when that pixel is misclassified.
    """
    num_classes = check_segmentation_shapes(logits, labels)
    is_label = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)
    z_label = jnp.sum(jnp.where(is_label, logits, 0.0), axis=-1)
    z_other = jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1)
    margin = z_other - z_label
    return margin.reshape(margin.shape[0], -1).mean(axis=-1)


def soft_dice(logits: Array, labels: Array, smooth: float = SOFT_DICE_SMOOTH) -> Array:
    """Soft Dice per example and foreground class (nnU-Net's ``SoftDiceLoss``, ``do_bg=False``).

    ``(2 sum p y + smooth) / (sum p + sum y + smooth)`` over the pixels of one example,
    ``p = softmax(logits)``, ``y`` the one-hot mask.

    Args:
      logits: float ``[B, H, W, C]``.
      labels: int ``[B, H, W]``.
      smooth: the additive smoothing (nnU-Net: 1e-5).

    Returns:
      float ``[B, C - 1]`` in ``(0, 1]``.
    """
    num_classes = check_segmentation_shapes(logits, labels)
    p = _flat(jax.nn.softmax(logits, axis=-1))[..., 1:]
    y = _flat(jax.nn.one_hot(labels, num_classes, dtype=logits.dtype))[..., 1:]
    intersection = jnp.sum(p * y, axis=1)
    return (2.0 * intersection + smooth) / (jnp.sum(p, axis=1) + jnp.sum(y, axis=1) + smooth)


def dice_ce_loss(logits: Array, labels: Array) -> Array:
    """nnU-Net's loss per example: pixel-mean cross-entropy + (1 - mean soft Dice).

    nnU-Net (Isensee et al. 2021) trains with ``CE + SoftDice`` (Dice over the
    foreground classes); the ``1 -`` shifts the Dice term to be ``>= 0`` and does not
    change the gradient.

    Args:
      logits: float ``[B, H, W, C]``.
      labels: int ``[B, H, W]``.

    Returns:
      float ``[B]``.
    """
    dice = jnp.mean(soft_dice(logits, labels), axis=-1)
    return pixel_cross_entropy(logits, labels) + (1.0 - dice)


def confusion_counts(logits: Array, labels: Array) -> tuple[Array, Array, Array]:
    """Per-example TP, FP, FN pixel counts of each foreground class of the argmax prediction.

    Args:
      logits: float ``[B, H, W, C]`` (numpy or jax).
      labels: int ``[B, H, W]``.

    Returns:
      ``(tp, fp, fn)``, each float32 ``[B, C - 1]`` (class c at column ``c - 1``).
    """
    num_classes = check_segmentation_shapes(logits, labels)
    xp = np if isinstance(logits, np.ndarray) and isinstance(labels, np.ndarray) else jnp
    pred = xp.argmax(logits, axis=-1).reshape(logits.shape[0], -1)
    y = xp.asarray(labels).reshape(logits.shape[0], -1)
    classes = xp.arange(1, num_classes)
    p = pred[..., None] == classes
    t = y[..., None] == classes
    tp = xp.sum(p & t, axis=1)
    fp = xp.sum(p & ~t, axis=1)
    fn = xp.sum(~p & t, axis=1)
    return tuple(v.astype(xp.float32) for v in (tp, fp, fn))


def dice_from_counts(tp: Array, fp: Array, fn: Array) -> Array:
    """``2 TP / (2 TP + FP + FN)`` elementwise; 1 where the denominator is 0 (module note)."""
    xp = np if isinstance(tp, np.ndarray) else jnp
    denom = 2.0 * tp + fp + fn
    return xp.where(denom > 0, 2.0 * tp / xp.where(denom > 0, denom, 1.0), 1.0)


def hard_dice(logits: Array, labels: Array) -> Array:
    """Hard Dice of the argmax prediction per example and foreground class: ``[B, C - 1]``."""
    return dice_from_counts(*confusion_counts(logits, labels))


def dice_score(logits: Array, labels: Array) -> Array:
    """A sample's Dice: the mean hard Dice over the foreground classes, ``[B]`` in ``[0, 1]``."""
    dice = hard_dice(logits, labels)
    return dice.mean(axis=-1)


def segmentation_correct(logits: Array, labels: Array, threshold: float = DICE_THRESHOLD) -> Array:
    """IMA's segmentation correctness: ``dice_score >= threshold`` (paper 0.6), bool ``[B]``."""
    return dice_score(logits, labels) >= threshold


def tvdi(tp: Array, fp: Array, fn: Array) -> np.ndarray:
    """Total Voxel Dice Index, Ma et al. Eq. 9, per foreground class.

    ``TVDI = 2 sum_i TP_i / (2 sum_i TP_i + sum_i FP_i + sum_i FN_i)`` over the n samples
    (the metric of nnU-Net's online evaluation).

    Args:
      tp: per-sample true-positive counts ``[n, C - 1]`` (:func:`confusion_counts`).
      fp: false-positive counts ``[n, C - 1]``.
      fn: false-negative counts ``[n, C - 1]``.

    Returns:
      float64 ``[C - 1]``.
    """
    tp, fp, fn = (np.asarray(v, np.float64).sum(axis=0) for v in (tp, fp, fn))
    return dice_from_counts(tp, fp, fn)


def adi(tp: Array, fp: Array, fn: Array) -> np.ndarray:
    """Average Dice Index, Ma et al. Eq. 10, per foreground class.

    ``ADI = (1 / n) sum_i 2 TP_i / (2 TP_i + FP_i + FN_i)``: the mean of the per-sample
    Dice (1 for a sample with the class in neither mask nor prediction).

    Args:
      tp: per-sample true-positive counts ``[n, C - 1]``.
      fp: false-positive counts ``[n, C - 1]``.
      fn: false-negative counts ``[n, C - 1]``.

    Returns:
      float64 ``[C - 1]``.
    """
    tp, fp, fn = (np.asarray(v, np.float64) for v in (tp, fp, fn))
    return dice_from_counts(tp, fp, fn).mean(axis=0)


def deep_supervision_loss(logits: Array, aux_logits, labels: Array) -> Array:
    """nnU-Net's deep-supervision loss per example: weighted :func:`dice_ce_loss` over scales.

    Output k (k = 0 full resolution, then the decoder's lower resolutions ``H / 2^k``) is
    compared with the mask subsampled by ``2^k`` (nearest) and weighted ``1 / 2^k``; the
    lowest resolution gets weight 0 and the weights are normalised to sum to 1 (nnU-Net's
    ``DeepSupervisionWrapper`` weights).

    Args:
      logits: float ``[B, H, W, C]`` full-resolution logits.
      aux_logits: sequence of float ``[B, H / 2^k, W / 2^k, C]``, k = 1, 2, ...
      labels: int ``[B, H, W]``.

    Returns:
      float ``[B]``.
    """
    outputs = [logits, *aux_logits]
    weights = np.array([1.0 / 2**k for k in range(len(outputs))])
    if len(outputs) > 1:
        weights[-1] = 0.0
    weights = weights / weights.sum()
    total = 0.0
    for k, (w, out) in enumerate(zip(weights, outputs, strict=True)):
        if w == 0.0:
            continue
        step = 2**k
        total = total + w * dice_ce_loss(out, labels[:, ::step, ::step])
    return total
