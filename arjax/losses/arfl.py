"""ARFL robust-feature loss of Hao et al. (seed 003), Eq. 1.

``L_robust(theta, x, y) = -1/(HW) sum_{i,j} sigmoid(|f_ij(theta, x) * y|)`` with
``y in {-1, +1}`` and ``f`` the last convolutional feature map (the penultimate layer for
MLPs). It is added to the classification loss with a weight lambda (Eq. 2,
``L_overall = L_cls + lambda * L_robust``) by ``arjax.methods.arfl``.
"""

import jax
import jax.numpy as jnp

from arjax.types import Array


def labels_to_pm1(labels: Array) -> Array:
    """Map binary labels ``{0, 1}`` to ``{-1, +1}`` as used by ARFL Eq. 1.

    Args:
      labels: ``[B]`` in ``{0, 1}`` (int, bool or float).

    Returns:
      float32 ``[B]``: ``2 * labels - 1``.
    """
    return 2.0 * jnp.asarray(labels, jnp.float32) - 1.0


def arfl_robust(features: Array, y_pm1: Array) -> Array:
    """ARFL robust loss ``L_robust`` (Hao et al., Eq. 1), per example.

    ``L_robust = -mean(sigmoid(|f * y|))`` where the mean runs over every non-batch
    dimension of ``features``. For a conv feature map ``[B, H, W, C]`` that is the mean over
    the H x W positions of Eq. 1 *and* over the C channels (the paper writes a single map
    f_ij; averaging the channels keeps the value in ``[-1, -1/2]`` whatever the width). For
    penultimate MLP features ``[B, D]`` it is the mean over the D units.

    Note: with ``y in {-1, +1}``, ``|f * y| = |f|``, so as printed the term does not depend
    on the label; it rewards large feature magnitudes. We keep the paper's formula
    (including y) so that it stays faithful, and soft or other-valued y still act as printed.

    Args:
      features: float ``[B, ...]``, e.g. ``[B, H, W, C]`` or ``[B, D]``.
      y_pm1: ``[B]`` labels in ``{-1, +1}`` (see :func:`labels_to_pm1`).

    Returns:
      float ``[B]`` in ``[-1, -1/2]``: the loss to *minimise* (lower = larger features).
    """
    features = jnp.asarray(features)
    if features.ndim < 2 or jnp.shape(y_pm1) != features.shape[:1]:
        raise ValueError(
            f"arfl_robust needs features [B, ...] with at least one feature dimension and "
            f"labels [B]; got features {features.shape} and labels {jnp.shape(y_pm1)}."
        )
    y = jnp.asarray(y_pm1, features.dtype).reshape((-1,) + (1,) * (features.ndim - 1))
    feature_axes = tuple(range(1, features.ndim))
    return -jnp.mean(jax.nn.sigmoid(jnp.abs(features * y)), axis=feature_axes)
