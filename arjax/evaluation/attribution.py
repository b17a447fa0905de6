"""Attribution maps for the CAM protocol: registry, gradient, SmoothGrad, IG, occlusion.

Khakzar et al.'s localisation protocol (CAM -> bilinear upsampling -> ``[0, 255]`` ->
per-class threshold -> IoU with the box, :mod:`arjax.evaluation.localization`) scores any
map that says, per pixel, how much it supports one output. Each method here registers a
function ``fn(model, params, batch_stats, x [B, H, W, C], channel [B], key, **options) ->
[B, h, w]`` (:func:`register_attribution`), explaining the logit ``z_c`` of output
``c = channel[b]`` of each image (eval-mode statistics; examples must not interact):

* ``"gradient"``: Simonyan et al. (2014) §3.1, ``max_c |d z / d x_c|`` per pixel (the
  vanilla saliency of :func:`arjax.evaluation.interpret.saliency`, of the class logit,
  without its clipping: the protocol min-max scales every map anyway);
* ``"smoothgrad"``: Smilkov et al. (2017) Eq. 3, the gradient averaged over ``n`` copies
  of the image with Gaussian noise of ``sigma = noise * (max(x) - min(x))`` (per image);
  ``n = 50`` and ``noise = 0.15`` (the paper's 10-20 % range and its sample count;
  MONAI's ``SmoothGrad`` uses 0.15 and 25); ``squared=True`` averages squared gradients
  instead (SmoothGrad-Squared, Hooker et al. 2019; MONAI's ``magnitude=True``);
* ``"integrated_gradients"``: Sundararajan et al. (2017) Eq. 3, ``(x - x') * sum_{k=1}^m
  grad(x' + k/m (x - x')) / m`` (the right Riemann sum), baseline ``x' = 0`` (black),
  ``m = 50`` steps, summed over channels (signed: completeness ``sum IG = z(x) - z(x')``
  holds for the map);
* ``"occlusion"``: Zeiler & Fergus (2014) §4.2, the drop ``z(x) - z(x with a patch set to
  value)`` averaged over every patch position covering a pixel (Captum's
  ``Occlusion``), ``16 x 16`` patches with stride 8 and value 0 by default (MONAI's
  ``OcclusionSensitivity`` mask size), the last row and column of patches flush with
  the image edge.

Grad-CAM and Grad-CAM++ are in :mod:`arjax.evaluation.gradcam`, the CAM in
:mod:`arjax.evaluation.interpret`. Definitions follow the papers; MONAI
(``monai.visualize``) was read for conventions, not copied.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from arjax import compilation
from arjax.models.functional import ModelFns
from arjax.registry import Registry
from arjax.types import Array, PRNGKey, PyTree


@dataclasses.dataclass(frozen=True)
class AttributionDef:
    """A registered attribution method.

    Attributes:
      fn: ``fn(model, params, batch_stats, x [B, H, W, C], channel int [B], key, **options)
        -> float [B, h, w]``: the map of output ``channel`` for each image (higher is more
        evidence for it), on any grid; jittable with ``model`` and ``options`` static.
      random: the method draws random numbers (it needs a key).
      doc: one line naming the definition.
    """

    fn: Callable[..., Array]
    random: bool = False
    doc: str = ""


# Attribution method name -> definition; each method's module registers its own.
ATTRIBUTIONS: Registry[AttributionDef] = Registry("attribution", "attribution")


def register_attribution(name: str, definition: AttributionDef) -> None:
    """Adds ``name`` to :data:`ATTRIBUTIONS` (a ValueError if it is taken)."""
    ATTRIBUTIONS.register(name, definition)


def check_attribution(method: str) -> AttributionDef:
    """The registered method; ConfigError with the valid choices and the nearest name."""
    return ATTRIBUTIONS.lookup(method)


def attribution_map(
    method: str,
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    x: Array,
    channel: Array,
    key: PRNGKey | None = None,
    **options: Any,
) -> Array:
    """The raw map ``[B, h, w]`` of attribution ``method`` for output ``channel`` of each image.

    Raises:
      ConfigError: an unknown method (with the valid choices and the nearest name).
      ValueError: a random method without a key.
    """
    definition = check_attribution(method)
    if definition.random and key is None:
        raise ValueError(f"attribution {method!r} is random: pass a PRNG key")
    channel = jnp.asarray(channel, jnp.int32)
    return definition.fn(model, params, batch_stats, jnp.asarray(x), channel, key, **options)


def class_score(
    model: ModelFns, params: PyTree, batch_stats: PyTree, channel: Array
) -> Callable[[Array], Array]:
    """``x [B, ...] -> z [B]``: logit ``channel[b]`` of image ``b`` (one-logit heads: it)."""
    logits_fn = model.logits_fn(params, batch_stats)
    return lambda x: pick_output(logits_fn(x), channel)


def pick_output(logits: Array, channel: Array) -> Array:
    """``logits[b, channel[b]]`` of logits ``[B, K]`` (or ``[B]``: one output), ``[B]``."""
    z = logits.reshape(logits.shape[0], -1)
    return jnp.take_along_axis(z, channel[:, None], axis=1)[:, 0]


def _input_gradient(score: Callable[[Array], Array], x: Array) -> Array:
    """``d score_b / d x_b`` for every image (the gradient of the batch sum)."""
    return jax.grad(lambda v: jnp.sum(score(v)))(x)


def _per_pixel(g: Array) -> Array:
    """``max_c |g_c|``: ``[B, H, W, C]`` -> ``[B, H, W]`` (``[B, H, W]`` -> ``|g|``)."""
    return jnp.abs(g).max(axis=-1) if g.ndim == 4 else jnp.abs(g)


@functools.partial(compilation.jit, static_argnums=0)
def gradient(
    model: ModelFns, params: PyTree, batch_stats: PyTree, x: Array, channel: Array, key=None
) -> Array:
    """Vanilla gradient map (Simonyan et al. 2014): ``max_c |d z / d x_c|``, ``[B, H, W]``."""
    del key
    return _per_pixel(_input_gradient(class_score(model, params, batch_stats, channel), x))


@functools.partial(compilation.jit, static_argnames=("model", "num_samples", "noise", "squared"))
def smooth_grad(
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    x: Array,
    channel: Array,
    key: PRNGKey | None = None,
    *,
    num_samples: int = 50,
    noise: float = 0.15,
    squared: bool = False,
) -> Array:
    """SmoothGrad (Smilkov et al. 2017, Eq. 3): the gradient averaged over noisy copies.

    Args:
      model: the model's pure functions.
      params: parameters.
      batch_stats: batch statistics.
      x: float ``[B, H, W, C]`` images.
      channel: int ``[B]`` the explained output of each image.
      key: PRNG key of the noise (may be None only when ``noise == 0``).
      num_samples: ``n`` noisy copies.
      noise: ``sigma / (max(x) - min(x))`` of each image.
      squared: average ``g^2`` (SmoothGrad-Squared) instead of ``g``.

    Returns:
      ``[B, H, W]``: ``max_c |mean g_c|`` (``max_c mean g_c^2`` when ``squared``).
    """
    if noise and key is None:
        raise ValueError("smooth_grad with noise > 0 needs a PRNG key")
    score = class_score(model, params, batch_stats, channel)
    span = x.max(axis=tuple(range(1, x.ndim))) - x.min(axis=tuple(range(1, x.ndim)))
    sigma = (noise * span).reshape((-1,) + (1,) * (x.ndim - 1))

    def body(i, total):
        eps = jax.random.normal(jax.random.fold_in(key, i), x.shape) if noise else 0.0
        g = _input_gradient(score, x + sigma * eps)
        return total + (g * g if squared else g)

    mean = jax.lax.fori_loop(0, num_samples, body, jnp.zeros_like(x)) / num_samples
    if squared:
        return mean.max(axis=-1) if mean.ndim == 4 else mean
    return _per_pixel(mean)


@functools.partial(compilation.jit, static_argnames=("model", "steps"))
def integrated_gradients(
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    x: Array,
    channel: Array,
    key: PRNGKey | None = None,
    *,
    steps: int = 50,
    baseline: float | Array = 0.0,
) -> Array:
    """Integrated gradients (Sundararajan et al. 2017, Eq. 3, right Riemann sum).

    Args:
      model: the model's pure functions.
      params: parameters.
      batch_stats: batch statistics.
      x: float ``[B, H, W, C]`` images.
      channel: int ``[B]`` the explained output of each image.
      key: unused.
      steps: ``m`` points on the path.
      baseline: ``x'``, a number or an array broadcastable to ``x`` (0: black).

    Returns:
      ``[B, H, W]``: ``sum_c (x - x')_c * mean_k grad_c(x' + k/m (x - x'))``; over all
      pixels it sums to about ``z(x) - z(x')`` (completeness, Prop. 1).
    """
    del key
    score = class_score(model, params, batch_stats, channel)
    base = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
    diff = x - base

    def body(k, total):
        return total + _input_gradient(score, base + (k + 1.0) / steps * diff)

    attributions = diff * jax.lax.fori_loop(0, steps, body, jnp.zeros_like(x)) / steps
    return attributions.sum(axis=-1) if x.ndim == 4 else attributions


def patch_starts(size: int, patch: int, stride: int) -> list[int]:
    """Patch offsets along one axis: every ``stride``, plus one flush with the far edge."""
    starts = list(range(0, size - patch + 1, stride))
    return starts if starts[-1] == size - patch else [*starts, size - patch]


@functools.partial(compilation.jit, static_argnames=("model", "patch", "stride"))
def occlusion(
    model: ModelFns,
    params: PyTree,
    batch_stats: PyTree,
    x: Array,
    channel: Array,
    key: PRNGKey | None = None,
    *,
    patch: int = 16,
    stride: int | None = None,
    value: float = 0.0,
) -> Array:
    """Occlusion sensitivity (Zeiler & Fergus 2014): mean logit drop when a patch is hidden.

    Args:
      model: the model's pure functions.
      params: parameters.
      batch_stats: batch statistics.
      x: float ``[B, H, W, C]`` images.
      channel: int ``[B]`` the explained output of each image.
      key: unused.
      patch: square patch side (clipped to the image).
      stride: patch step (default ``patch // 2``).
      value: what a hidden pixel is set to.

    Returns:
      ``[B, H, W]``: per pixel, the mean of ``z(x) - z(x_occluded)`` over the patches
      covering it (one forward pass of the batch per patch position).
    """
    del key
    h, w = x.shape[1:3]
    ph, pw = min(patch, h), min(patch, w)
    step = stride or max(1, patch // 2)
    rows, cols = patch_starts(h, ph, step), patch_starts(w, pw, step)
    starts = np.array([(r, c) for r in rows for c in cols], np.int32)  # [P, 2]
    cover = np.zeros((h, w))
    for r, c in starts:
        cover[r : r + ph, c : c + pw] += 1
    score = class_score(model, params, batch_stats, channel)
    clean = score(x)
    ii, jj = jnp.arange(h)[:, None], jnp.arange(w)[None, :]

    def one(total, start):
        inside = (ii >= start[0]) & (ii < start[0] + ph) & (jj >= start[1]) & (jj < start[1] + pw)
        hidden = jnp.where(inside[None, :, :, None], jnp.asarray(value, x.dtype), x)
        drop = clean - score(hidden)
        return total + drop[:, None, None] * inside, None

    total, _ = jax.lax.scan(one, jnp.zeros((x.shape[0], h, w), x.dtype), jnp.asarray(starts))
    return total / jnp.asarray(cover, x.dtype)


register_attribution("gradient", AttributionDef(gradient, doc="vanilla gradient (Simonyan 2014)"))
register_attribution(
    "smoothgrad", AttributionDef(smooth_grad, random=True, doc="SmoothGrad (Smilkov 2017)")
)
register_attribution(
    "integrated_gradients",
    AttributionDef(integrated_gradients, doc="integrated gradients (Sundararajan 2017)"),
)
register_attribution("occlusion", AttributionDef(occlusion, doc="occlusion (Zeiler & Fergus 2014)"))
