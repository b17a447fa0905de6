"""Grad-CAM and Grad-CAM++: class maps from the gradient of a logit w.r.t. the last feature map.

With ``A [h, w, K]`` the last convolutional feature map (the ``features`` a model returns
next to its logits, :mod:`arjax.models.outputs`) and ``g = d z_c / d A`` the gradient of
the explained logit:

* **Grad-CAM** (Selvaraju et al. 2017, Eq. 1-2): ``alpha_k = mean_ij g_ijk`` and
  ``map = ReLU(sum_k alpha_k A_k)``. For a network whose logits are a linear head on the
  global average of ``A`` (``z_c = b_c + mean_ij sum_k W[k, c] A_ijk``), ``g_ijk = W[k, c]
  / (h w)``, so Grad-CAM is ``ReLU(CAM_c) / (h w)``: the CAM up to scale where it is
  positive (Selvaraju et al. §3.1 make the same remark).
* **Grad-CAM++** (Chattopadhay et al. 2018, Eq. 19 with the exponential of Eq. 17):
  ``alpha_ijk = g^2 / (2 g^2 + sum_ab A_abk g^3)`` (0 where the denominator is 0, as
  MONAI's ``GradCAMpp``), ``w_k = sum_ij alpha_ijk ReLU(g_ijk)`` and ``map = ReLU(sum_k w_k
  A_k)``. The paper's ``ReLU(dS/dA) = exp(z_c) ReLU(g)`` carries a positive per-image
  factor ``exp(z_c)``; arjax leaves it out (the protocol scales every map to ``[0, 255]``,
  and ``exp`` overflows float32 for logits above 88). On a GAP + linear head, ``alpha_k =
  1 / (2 + W[k, c] mean_ij A_ijk)``.

Computing ``g`` needs the logits as a function of ``A``: a module's own
``logits_from_features(features)`` method (arjax's VGG and IMA CNNs have one), or else a
GAP + linear head (:func:`arjax.evaluation.interpret.cam_head`: ResNets, DenseNets,
``cam_cnn``), for which it is ``head(mean_ij A)``. The maps live on the feature grid
``[h, w]``; the localisation protocol upsamples them as CAMs.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from arjax import compilation
from arjax.evaluation.attribution import AttributionDef, pick_output, register_attribution
from arjax.evaluation.interpret import cam_head
from arjax.models.functional import ModelFns
from arjax.types import Array, PRNGKey, PyTree


def feature_head(module: nnx.Module) -> Callable[[Array], Array]:
    """``features [B, h, w, K] -> logits`` of a module (see the module docstring).

    Raises:
      ValueError: a module with neither ``logits_from_features`` nor a GAP + linear head.
    """
    method = getattr(module, "logits_from_features", None)
    if callable(method):
        return method
    try:
        head = cam_head(module)
    except ValueError:
        raise ValueError(
            f"Grad-CAM needs the logits as a function of the feature map; "
            f"{type(module).__name__} has no `logits_from_features(features)` method and no "
            "global-average-pooling + linear head (resnet18/50, densenet121[_truncated], "
            "cam_cnn, vgg16, the IMA CNNs have one or the other)"
        ) from None
    return lambda features: head(features.mean(axis=(1, 2)))


@functools.partial(compilation.jit, static_argnums=0)
def features_and_gradients(
    model: ModelFns, params: PyTree, batch_stats: PyTree, x: Array, channel: Array
) -> tuple[Array, Array]:
    """The last feature map ``A`` and ``d z_c / d A``, both ``[B, h, w, K]`` (eval mode).

    Args:
      model: the model's pure functions (returning ``(logits, features)``).
      params: parameters.
      batch_stats: batch statistics.
      x: float ``[B, H, W, C]`` images.
      channel: int ``[B]`` the explained output of each image.
    """
    _, features, _ = model.apply(params, batch_stats, x, train=False)
    if features is None or features.ndim != 4:
        raise ValueError(
            "Grad-CAM needs the model's last convolutional feature map [B, h, w, K]; the "
            "model returns none: return (logits, feature_map) from it"
        )
    module = nnx.merge(model.graphdef, params, batch_stats, copy=True)
    module.eval()
    head = feature_head(module)

    return features, jax.grad(lambda a: pick_output(head(a), channel).sum())(features)


def grad_cam(
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    x: Array,
    channel: Array,
    key: PRNGKey | None = None,
) -> Array:
    """Grad-CAM (Selvaraju et al. 2017): ``ReLU(sum_k mean_ij(g_k) A_k)``, ``[B, h, w]``."""
    del key
    a, g = features_and_gradients(model, params, batch_stats, x, channel)
    alpha = g.mean(axis=(1, 2))  # [B, K]
    return jax.nn.relu(jnp.einsum("bhwk,bk->bhw", a, alpha))


def grad_cam_pp(
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    x: Array,
    channel: Array,
    key: PRNGKey | None = None,
) -> Array:
    """Grad-CAM++ (Chattopadhay et al. 2018, Eq. 19), without ``exp(z_c)``: ``[B, h, w]``."""
    del key
    a, g = features_and_gradients(model, params, batch_stats, x, channel)
    g2 = g * g
    denominator = 2.0 * g2 + a.sum(axis=(1, 2), keepdims=True) * g2 * g
    alpha = g2 / jnp.where(denominator != 0.0, denominator, 1.0)
    weights = jnp.sum(alpha * jax.nn.relu(g), axis=(1, 2))  # [B, K]
    return jax.nn.relu(jnp.einsum("bhwk,bk->bhw", a, weights))


register_attribution("grad_cam", AttributionDef(grad_cam, doc="Grad-CAM (Selvaraju 2017)"))
register_attribution(
    "grad_cam_pp", AttributionDef(grad_cam_pp, doc="Grad-CAM++ (Chattopadhay 2018)")
)
