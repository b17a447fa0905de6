"""Per-example classification losses and correctness for the three head types.

arjax models emit one of three heads (see ``arjax.types``):

* ``"softmax"``: logits ``[B, K]`` (``K > 1``) with integer class ids ``[B]``;
* ``"binary"``: one logit per example, ``[B]`` or ``[B, 1]``, with labels ``[B]``
  in ``{0, 1}`` (int or float);
* ``"multilabel"``: logits ``[B, C]`` with multi-hot labels ``[B, C]`` (sigmoid per class);
* ``"segmentation"``: per-pixel logits ``[B, H, W, C]`` (``C >= 2``) with integer masks
  ``[B, H, W]``: the loss is the pixel-mean cross-entropy and "correct" is IMA's rule,
  Dice ``>= 0.6`` (:mod:`arjax.losses.segmentation`).

Every function returns one value per example, ``[B]``; the caller reduces (DESIGN §3.5).
The head type is decided from static shapes and dtypes, so the checks run at trace time.
"""

import jax
import jax.numpy as jnp
import optax

from arjax.losses.segmentation import (
    DICE_THRESHOLD,
    pixel_cross_entropy,
    segmentation_correct,
)
from arjax.types import Array

HEAD_KINDS = ("softmax", "binary", "multilabel", "segmentation")


def head_kind(logits: Array, labels: Array) -> str:
    """Decide which head a ``(logits, labels)`` pair belongs to, from static shapes.

    Args:
      logits: ``[B, K]`` softmax logits (``K > 1``), ``[B]`` or ``[B, 1]`` single binary
        logits, or ``[B, C]`` multi-label logits.
      labels: ``[B]`` integer class ids (softmax), ``[B]`` values in ``{0, 1}`` (binary),
        or ``[B, C]`` multi-hot (multi-label, same shape as ``logits``); per-pixel logits
        ``[B, H, W, C]`` with integer masks ``[B, H, W]`` are a segmentation head.

    Returns:
      One of ``HEAD_KINDS``: ``"softmax"``, ``"binary"``, ``"multilabel"`` or
      ``"segmentation"``.

    Raises:
      ValueError: if the shapes do not match any head, with both shapes in the message.
    """
    lshape, yshape = tuple(jnp.shape(logits)), tuple(jnp.shape(labels))
    what = f"logits {lshape} and labels {yshape}"
    if len(lshape) == 0 or len(yshape) == 0 or lshape[0] != yshape[0]:
        raise ValueError(f"{what}: need a leading batch dimension of the same size.")
    if len(lshape) >= 3 and yshape == lshape[:-1] and lshape[-1] >= 2:
        if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
            raise ValueError(
                f"{what}: segmentation masks must be integer class ids (got dtype "
                f"{jnp.asarray(labels).dtype})."
            )
        return "segmentation"
    if len(lshape) == 1:
        if len(yshape) == 1:
            return "binary"
    elif len(lshape) == 2:
        if lshape[1] == 1 and (len(yshape) == 1 or yshape == lshape):
            return "binary"
        if yshape == lshape:
            return "multilabel"
        if len(yshape) == 1:
            if not jnp.issubdtype(jnp.asarray(labels).dtype, jnp.integer):
                raise ValueError(
                    f"{what}: labels [B] with logits [B, K>1] must be integer class ids "
                    f"(got dtype {jnp.asarray(labels).dtype}); for multi-label heads pass "
                    "multi-hot labels [B, K]."
                )
            return "softmax"
    raise ValueError(
        f"{what} match no head. Expected one of: logits [B, K>1] with integer labels [B] "
        "(softmax); logits [B] or [B, 1] with labels [B] (binary); logits [B, C] with "
        "multi-hot labels [B, C] (multi-label); logits [B, H, W, C>1] with integer masks "
        "[B, H, W] (segmentation)."
    )


def _binary_logits(logits: Array) -> Array:
    """Squeeze a single-logit head ``[B, 1]`` to ``[B]`` (``[B]`` passes through)."""
    return logits.reshape(logits.shape[0])


def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    """Softmax cross-entropy with integer labels, per example.

    Args:
      logits: float ``[B, K]``.
      labels: int ``[B]`` class ids in ``[0, K)``.

    Returns:
      float ``[B]``: ``-log softmax(logits)[label]``.
    """
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def sigmoid_binary_cross_entropy(logits: Array, labels: Array) -> Array:
    """Sigmoid binary cross-entropy per example, summed over classes for multi-label heads.

    Args:
      logits: float ``[B]`` or ``[B, 1]`` (one binary logit), or ``[B, C]`` (multi-label).
      labels: ``[B]`` in ``{0, 1}`` (int or float) for a single logit (``[B, 1]`` also
        accepted), or multi-hot ``[B, C]``.

    Returns:
      float ``[B]``: ``-sum_c [y_c log sigmoid(z_c) + (1 - y_c) log(1 - sigmoid(z_c))]``.
    """
    labels = jnp.asarray(labels)
    kind = head_kind(logits, labels)
    if kind in ("softmax", "segmentation"):
        raise ValueError(
            f"sigmoid_binary_cross_entropy got logits {logits.shape} with class-id labels "
            f"{jnp.shape(labels)}: pass multi-hot labels [B, C] or a single logit [B]."
        )
    if kind == "binary":
        z = _binary_logits(logits)
        return optax.sigmoid_binary_cross_entropy(z, jnp.reshape(labels, z.shape).astype(z.dtype))
    return optax.sigmoid_binary_cross_entropy(logits, labels.astype(logits.dtype)).sum(axis=-1)


def weighted_bce(
    logits: Array, multi_hot: Array, beta: float | Array | None = None, *, mask: Array | None = None
) -> Array:
    """Class-balanced binary cross-entropy of Khakzar et al. (seed 002), Eq. 1, per example.

    ``L(x, y) = -sum_j [beta * y_j * log(p_j) + (1 - y_j) * log(1 - p_j)]`` with
    ``p = sigmoid(logits)``, computed with ``log_sigmoid`` for stability.

    When ``beta`` is None it is computed from the batch as in the paper: the number of
    negative label entries divided by the number of positive label entries, counted over
    all ``B * C`` entries of the (unmasked) batch. If the batch holds no positive entry the
    positive term is zero for every example, so beta has no effect; we then use
    ``beta = 1`` (plain BCE) rather than dividing by zero, which keeps the value and its
    gradient finite. Beta is a label statistic and carries no gradient.

    Args:
      logits: float ``[B, C]`` (a single logit ``[B]`` is treated as ``C = 1``).
      multi_hot: ``[B, C]`` labels in ``{0, 1}`` (int, bool or float), same shape as logits.
      beta: positive weight; python float, 0-d array, or None to compute it from the batch.
      mask: optional ``[B]`` weights in ``{0, 1}``; examples with mask 0 (padding) do not
        count towards beta. Their loss is still returned; the caller weights it out.

    Returns:
      float ``[B]``: the weighted BCE summed over the C classes.
    """
    if jnp.shape(logits) != jnp.shape(multi_hot):
        raise ValueError(
            f"weighted_bce needs multi-hot labels shaped like the logits; got logits "
            f"{jnp.shape(logits)} and labels {jnp.shape(multi_hot)}."
        )
    z = logits.reshape(logits.shape[0], -1)
    y = jnp.reshape(multi_hot, z.shape).astype(z.dtype)
    if beta is None:
        w = jnp.ones(z.shape[:1], z.dtype) if mask is None else jnp.asarray(mask, z.dtype)
        n_pos = jnp.sum(w[:, None] * y)
        n_neg = jnp.sum(w[:, None] * (1.0 - y))
        beta = jnp.where(n_pos > 0, n_neg / jnp.maximum(n_pos, 1.0), 1.0)
        beta = jax.lax.stop_gradient(beta)
    per_class = beta * y * jax.nn.log_sigmoid(z) + (1.0 - y) * jax.nn.log_sigmoid(-z)
    return -per_class.sum(axis=-1)


def classification_loss(logits: Array, labels: Array) -> Array:
    """The default per-example loss for any head: softmax CE or (multi-label) sigmoid BCE.

    Dispatch (static, trace time): integer labels ``[B]`` with logits ``[B, K>1]`` ->
    :func:`softmax_cross_entropy`; masks ``[B, H, W]`` with logits ``[B, H, W, C]`` ->
    :func:`arjax.losses.segmentation.pixel_cross_entropy`; logits ``[B]`` or ``[B, 1]`` -> binary
    :func:`sigmoid_binary_cross_entropy`; labels shaped like logits ``[B, C]`` -> multi-label
    BCE summed over classes.

    Args:
      logits: float ``[B, K]``, ``[B]``, ``[B, 1]`` or ``[B, C]`` (see above).
      labels: int ``[B]``, ``[B]`` in ``{0, 1}``, or multi-hot ``[B, C]``.

    Returns:
      float ``[B]``.

    Raises:
      ValueError: if the shapes match no head.
    """
    kind = head_kind(logits, labels)
    if kind == "softmax":
        return softmax_cross_entropy(logits, labels)
    if kind == "segmentation":
        return pixel_cross_entropy(logits, labels)
    return sigmoid_binary_cross_entropy(logits, labels)


def predictions_correct(
    logits: Array, labels: Array, *, dice_threshold: float = DICE_THRESHOLD
) -> Array:
    """Whether each example is classified correctly.

    Softmax: ``argmax(logits) == label``. Single binary logit: ``(logit > 0) == label``.
    Multi-label: every one of the C classes right (``(z_c > 0) == y_c`` for all c).
    Segmentation: the sample's Dice (mean over foreground classes) is at least
    ``dice_threshold`` (IMA's segmentation rule, 0.6 in the paper).

    Args:
      logits: float ``[B, K]``, ``[B]``, ``[B, 1]``, ``[B, C]`` or ``[B, H, W, C]``.
      labels: int ``[B]``, ``[B]`` in ``{0, 1}``, multi-hot ``[B, C]`` or masks ``[B, H, W]``.
      dice_threshold: the Dice a segmentation counts as correct from (other heads ignore it).

    Returns:
      bool ``[B]``.
    """
    labels = jnp.asarray(labels)
    kind = head_kind(logits, labels)
    if kind == "softmax":
        return jnp.argmax(logits, axis=-1) == labels
    if kind == "segmentation":
        return segmentation_correct(logits, labels, dice_threshold)
    if kind == "binary":
        z = _binary_logits(logits)
        return (z > 0) == (jnp.reshape(labels, z.shape) > 0.5)
    return jnp.all((logits > 0) == (labels > 0.5), axis=-1)
