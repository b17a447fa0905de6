"""Per-example objectives that an untargeted attack maximises.

Names (DESIGN §8): ``"ce"`` (cross-entropy, or BCE for one logit / multi-hot labels),
``"margin"`` (Carlini-Wagner logit margin, arXiv 1608.04644 objective f6, unclamped),
``"kl"`` (KL divergence from the clean prediction, TRADES, arXiv 1901.08573 Eq. 5) and
``"weighted_bce"`` (Khakzar et al. Eq. 1, the class-balanced BCE their FGSM of Eq. 2
differentiates: beta = negatives / positives over the label entries the attack is given).
All objectives return ``[B]`` and work for the heads of
:func:`arjax.losses.classification.head_kind`; on a segmentation head (logits
``[B, H, W, C]``, masks ``[B, H, W]``) ``"ce"``, ``"margin"`` and ``"kl"`` are the pixel
values averaged over each example's pixels (:mod:`arjax.losses.segmentation`).
"""

import jax
import jax.numpy as jnp
import optax

from arjax.losses.classification import classification_loss, head_kind, weighted_bce
from arjax.losses.segmentation import pixel_margin
from arjax.types import Array

LOSSES = ("ce", "margin", "kl", "weighted_bce")


def check_loss_name(name: str) -> None:
    """Raise a ValueError listing the valid choices unless ``name`` is in ``LOSSES``."""
    if name not in LOSSES:
        raise ValueError(f"unknown attack loss {name!r}; valid choices: {', '.join(LOSSES)}.")


def _label_and_other(logits: Array, labels: Array) -> tuple[Array, Array]:
    """``(z_y [B], max_{j != y} z_j [B])`` of softmax logits ``[B, K]``."""
    is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
    z_label = jnp.sum(jnp.where(is_label, logits, 0.0), axis=-1)
    z_other = jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1)
    return z_label, z_other


def margin_objective(logits: Array, labels: Array) -> Array:
    """Logit margin, positive exactly when the example is misclassified.

    Softmax: ``max_{j != y} z_j - z_y`` (Carlini & Wagner). Single binary logit:
    ``-(2y - 1) * z``. Multi-label: ``sum_c -(2 y_c - 1) * z_c`` (the per-class binary
    margins summed; positive-iff-misclassified then holds per class, not for the sum).
    Segmentation: the pixel margins averaged over the example
    (:func:`arjax.losses.segmentation.pixel_margin`; positive-iff-wrong holds per pixel).

    Args:
      logits: float ``[B, K]``, ``[B]``, ``[B, 1]`` or ``[B, C]``.
      labels: int ``[B]``, ``[B]`` in ``{0, 1}``, or multi-hot ``[B, C]``.

    Returns:
      float ``[B]``.
    """
    labels = jnp.asarray(labels)
    kind = head_kind(logits, labels)
    if kind == "softmax":
        z_label, z_other = _label_and_other(logits, labels)
        return z_other - z_label
    if kind == "segmentation":
        return pixel_margin(logits, labels)
    if kind == "binary":
        z = logits.reshape(logits.shape[0])
        return _binary_margins(z, jnp.reshape(labels, z.shape))
    return jnp.sum(_binary_margins(logits, labels), axis=-1)


def _binary_margins(logits: Array, labels: Array) -> Array:
    """``-(2 y - 1) * z`` elementwise: each binary logit's margin, positive iff wrong."""
    return -(2.0 * labels.astype(logits.dtype) - 1.0) * logits


def _bernoulli_log_probs(logits: Array) -> Array:
    """``[..., 2]`` log-probabilities ``(log p, log(1 - p))`` of ``p = sigmoid(logits)``."""
    return jnp.stack([jax.nn.log_sigmoid(logits), jax.nn.log_sigmoid(-logits)], axis=-1)


def kl_objective(logits: Array, labels: Array, clean_logits: Array) -> Array:
    """``KL(P_clean || P_adv)`` per example, the TRADES inner objective.

    Softmax: categorical KL between ``softmax(clean_logits)`` and ``softmax(logits)``.
    Single binary logit: the Bernoulli KL between ``sigmoid(clean)`` and ``sigmoid(z)``;
    multi-label: the Bernoulli KLs summed over the C classes. The labels only select the
    head. No gradient is stopped here: the attack stops it on ``clean_logits``.

    Args:
      logits: float ``[B, K]``, ``[B]``, ``[B, 1]`` or ``[B, C]`` at the perturbed input.
      labels: labels matching the head (used for the dispatch only).
      clean_logits: float, same shape as ``logits``, at the clean input.

    Returns:
      float ``[B]``, ``>= 0``, zero when ``logits == clean_logits``.
    """
    if jnp.shape(clean_logits) != jnp.shape(logits):
        raise ValueError(
            f"clean_logits {jnp.shape(clean_logits)} must have the shape of the logits "
            f"{jnp.shape(logits)}."
        )
    kind = head_kind(logits, jnp.asarray(labels))
    if kind in ("softmax", "segmentation"):
        kl = optax.losses.kl_divergence_with_log_targets(
            jax.nn.log_softmax(logits), jax.nn.log_softmax(clean_logits)
        )
        return kl if kind == "softmax" else kl.reshape(kl.shape[0], -1).mean(axis=-1)
    per_class = optax.losses.kl_divergence_with_log_targets(
        _bernoulli_log_probs(logits), _bernoulli_log_probs(clean_logits)
    )
    return per_class.reshape(per_class.shape[0], -1).sum(axis=-1)


def attack_objective(
    name: str, logits: Array, labels: Array, clean_logits: Array | None = None
) -> Array:
    """The per-example value an untargeted attack maximises.

    Args:
      name: one of ``LOSSES``: ``"ce"`` -> :func:`arjax.losses.classification_loss`;
        ``"margin"`` -> :func:`margin_objective`; ``"kl"`` -> :func:`kl_objective`;
        ``"weighted_bce"`` -> :func:`arjax.losses.weighted_bce` (beta from ``labels``).
      logits: float ``[B, K]``, ``[B]``, ``[B, 1]`` or ``[B, C]`` at the perturbed input.
      labels: int ``[B]``, ``[B]`` in ``{0, 1}``, or multi-hot ``[B, C]``.
      clean_logits: logits at the clean input, required for ``"kl"`` only.

    Returns:
      float ``[B]``.

    Raises:
      ValueError: for an unknown name (the message lists the valid ones), for ``"kl"``
        without ``clean_logits``, or for shapes that match no head.
    """
    check_loss_name(name)
    if name == "ce":
        return classification_loss(logits, labels)
    if name == "weighted_bce":
        return weighted_bce(logits, labels)
    if name == "margin":
        return margin_objective(logits, labels)
    if clean_logits is None:
        raise ValueError('attack loss "kl" needs clean_logits (the logits at the clean input).')
    return kl_objective(logits, labels, clean_logits)


def worst_label_margin(logits: Array, labels: Array) -> Array:
    """A margin positive exactly when :func:`arjax.losses.predictions_correct` is False.

    Softmax and single binary logit: :func:`margin_objective`. Multi-label (robustness is
    the exact match of all C labels): the worst label's binary margin,
    ``max_c -(2 y_c - 1) z_c``, so flipping any one label is enough to make it positive
    (the sum in :func:`margin_objective` instead asks for all labels at once).

    Args:
      logits: float ``[B, K]``, ``[B]``, ``[B, 1]`` or ``[B, C]``.
      labels: int ``[B]``, ``[B]`` in ``{0, 1}``, or multi-hot ``[B, C]``.

    Returns:
      float ``[B]``.
    """
    labels = jnp.asarray(labels)
    if head_kind(logits, labels) != "multilabel":  # segmentation: the pixel-mean margin
        return margin_objective(logits, labels)
    return jnp.max(_binary_margins(logits, labels), axis=-1)


def _label_and_top(logits: Array, labels: Array, k: int) -> tuple[Array, Array, Array]:
    """``(z_y [B], max_{j != y} z_j [B], top-k logits [B, k] in decreasing order)``."""
    z_label, z_other = _label_and_other(logits, labels)
    return z_label, z_other, jax.lax.top_k(logits, k)[0]


DLR_EPS = 1e-12  # the denominator offset of Croce & Hein (2020), Sec. 4


def dlr_objective(logits: Array, labels: Array) -> Array:
    """Difference of Logits Ratio (Croce & Hein 2020, arXiv 2003.01690, Sec. 4).

    ``DLR = -(z_y - max_{j != y} z_j) / (z_pi1 - z_pi3 + 1e-12)`` with ``z_pi1 >= z_pi2 >=
    ...`` the sorted logits: the CW margin divided by a spread of the logits, so it is
    invariant to shifting and rescaling the logits. Positive iff misclassified.

    Fallbacks where the ratio needs more classes than the head has (documented choice,
    never NaN): softmax with K = 2, a single binary logit and multi-label heads use the
    unnormalised margin :func:`worst_label_margin` (the logit difference ``z_other - z_y``
    for K = 2, ``-(2y - 1) z`` for one logit, the worst label's margin for multi-hot
    labels).

    Args:
      logits: float ``[B, K]``, ``[B]``, ``[B, 1]`` or ``[B, C]``.
      labels: int ``[B]``, ``[B]`` in ``{0, 1}``, or multi-hot ``[B, C]``.

    Returns:
      float ``[B]``.
    """
    labels = jnp.asarray(labels)
    if head_kind(logits, labels) != "softmax" or logits.shape[-1] < 3:
        return worst_label_margin(logits, labels)
    z_label, z_other, top = _label_and_top(logits, labels, 3)
    return (z_other - z_label) / (top[:, 0] - top[:, 2] + DLR_EPS)


def targeted_dlr_objective(logits: Array, labels: Array, target: Array) -> Array:
    """Targeted DLR (Croce & Hein 2020, arXiv 2003.01690, Sec. 4), maximised.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`` for K >= 4: positive once the
    target logit beats the true one. Fallbacks (documented choice, never NaN): K = 3 uses
    the untargeted denominator ``z_pi1 - z_pi3`` (there is no ``z_pi4``); K = 2 the logit
    difference ``z_t - z_y``; a single binary logit and multi-label heads have no target
    class and use :func:`worst_label_margin` (``target`` is ignored).

    Args:
      logits: float ``[B, K]``, ``[B]``, ``[B, 1]`` or ``[B, C]``.
      labels: int ``[B]``, ``[B]`` in ``{0, 1}``, or multi-hot ``[B, C]``.
      target: int ``[B]`` target classes (softmax heads; ``target != labels``).

    Returns:
      float ``[B]``.
    """
    labels = jnp.asarray(labels)
    if head_kind(logits, labels) != "softmax":
        return worst_label_margin(logits, labels)
    num_classes = logits.shape[-1]
    is_target = jax.nn.one_hot(target, num_classes, dtype=jnp.bool_)
    z_target = jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)
    z_label, _, top = _label_and_top(logits, labels, min(num_classes, 4))
    gap = z_target - z_label
    if num_classes == 2:
        return gap
    if num_classes == 3:
        return gap / (top[:, 0] - top[:, 2] + DLR_EPS)
    return gap / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + DLR_EPS)


def targeted_margin_objective(logits: Array, labels: Array, target: Array) -> Array:
    """Targeted CW margin ``z_t - z_y`` (softmax); :func:`worst_label_margin` otherwise.

    Args:
      logits: float ``[B, K]``, ``[B]``, ``[B, 1]`` or ``[B, C]``.
      labels: int ``[B]``, ``[B]`` in ``{0, 1}``, or multi-hot ``[B, C]``.
      target: int ``[B]`` target classes (ignored for non-softmax heads).

    Returns:
      float ``[B]``.
    """
    labels = jnp.asarray(labels)
    if head_kind(logits, labels) != "softmax":
        return worst_label_margin(logits, labels)
    num_classes = logits.shape[-1]
    is_target = jax.nn.one_hot(target, num_classes, dtype=jnp.bool_)
    is_label = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)
    z_target = jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)
    return z_target - jnp.sum(jnp.where(is_label, logits, 0.0), axis=-1)
