"""SegPGD (Gu, Zhao, Tresp & Torr, ECCV 2022, arXiv 2207.12391): PGD for segmentation heads.

Plain PGD on the pixel-mean cross-entropy spends its gradient on pixels that are already
misclassified (their cross-entropy is the largest and keeps growing). SegPGD splits the
pixels of each image, at every iteration, into the correctly classified ``P^T`` and the
wrongly classified ``P^F`` (argmax of the current logits; the split carries no gradient)
and maximises (their Eq. 4)::

    L_t = (1 - lambda_t) / (H W) * sum_{j in P^T} CE_j + lambda_t / (H W) * sum_{k in P^F} CE_k

with ``lambda_t = (t - 1) / (2 T)`` at iteration ``t = 1 .. T`` (their Eq. 5): the first
step attacks only the correct pixels, and the weight of the wrong ones rises linearly
towards (not reaching) 1/2, so correct pixels always weigh more. Everything else is PGD
(their Alg. 1; :func:`arjax.attacks.pgd.pgd`): a uniform random start in the ball, steps
``step_size * step_direction(grad)`` projected onto the ball and the data bounds. The
paper attacks in L-inf with sign steps; the L2 variant normalises the gradient as arjax's
PGD does. The schedule follows Croce et al.'s implementation (``segpgd_loss``,
nmndeep/robust-segmentation: ``lambda = t / (2 T)`` with ``t = 0 .. T - 1``).

Spec: ``segpgd:linf:8/255:20`` (steps ``T``; step size ``alpha * eps / T`` by the registry
rule unless ``step_size`` is set); heads other than segmentation are refused.
"""

import functools

import jax
import jax.numpy as jnp
import optax
from jax import lax

from arjax.attacks.geometry import clip_to_bounds, per_sample
from arjax.attacks.pgd import (
    DEFAULT_ALPHA,
    ascent_step,
    call_logits_fn,
    check_attack_args,
    start_delta,
)
from arjax.attacks.registry import AttackDef, register_attack
from arjax.attacks.selection import worst_of_restarts
from arjax.losses.segmentation import check_segmentation_shapes
from arjax.types import Array, LogitsFn, PRNGKey, Radius


def segpgd_lambda(t: Array | int, num_steps: int) -> Array:
    """The weight of the wrongly classified pixels at iteration ``t`` (1-based): ``(t-1)/2T``."""
    return (jnp.asarray(t, jnp.float32) - 1.0) / (2.0 * num_steps)


def segpgd_objective(logits: Array, labels: Array, lam: Array | float) -> Array:
    """SegPGD's loss (Eq. 4) per example: correct pixels weighted ``1 - lam``, wrong ``lam``.

    Args:
      logits: float ``[B, H, W, C]``.
      labels: int ``[B, H, W]`` ground-truth class ids.
      lam: the weight ``lambda_t`` of the misclassified pixels.

    Returns:
      float ``[B]``: ``sum_pixels w_p CE_p / (H W)``; the correct/wrong split is taken at
      ``logits`` with its gradient stopped.
    """
    check_segmentation_shapes(logits, labels, where="segpgd")
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)  # [B, H, W]
    correct = lax.stop_gradient(jnp.argmax(logits, axis=-1) == labels)
    weight = jnp.where(correct, 1.0 - lam, lam)
    return (weight * ce).reshape(ce.shape[0], -1).mean(axis=-1)


def segpgd(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: PRNGKey | None = None,
    *,
    eps: Radius,
    step_size: Radius | None = None,
    num_steps: int = 20,
    norm: str = "linf",
    random_start: bool = True,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> Array:
    """SegPGD on a segmentation head (Gu et al. 2022, Alg. 1).

    Args:
      logits_fn: images ``[B, H, W, C_in]`` -> per-pixel logits ``[B, H, W, C]``.
      x: float ``[B, H, W, C_in]`` clean inputs.
      y: int ``[B, H, W]`` ground-truth masks.
      key: PRNG key; required when ``random_start``.
      eps: radius, python float or per-sample ``[B]`` (may be traced).
      step_size: python float or ``[B]``; default ``DEFAULT_ALPHA * eps / num_steps``.
      num_steps: ``T``, a static python int ``>= 0``.
      norm: ``"linf"`` (the paper's) or ``"l2"``.
      random_start: start from a uniform random point of the ball (the paper's).
      bounds: ``(lo, hi)`` data range, or None.

    Returns:
      ``x_adv`` shaped like ``x``, inside the ball and the bounds, gradients stopped.

    Raises:
      ValueError: bad static arguments, or logits/masks that are not a segmentation head.
    """
    check_attack_args(norm, "ce", num_steps, random_start, key, name="segpgd")
    logits_fn = functools.partial(call_logits_fn, logits_fn)
    x = lax.stop_gradient(jnp.asarray(x))
    eps_b = per_sample(eps, x)
    if step_size is None:
        step_size = DEFAULT_ALPHA * jnp.asarray(eps) / max(num_steps, 1)
    step_b = per_sample(step_size, x)

    def total(x_adv: Array, lam: Array) -> Array:
        return jnp.sum(segpgd_objective(logits_fn(x_adv), y, lam))

    grad_fn = jax.grad(total)

    def body(i, delta: Array) -> Array:
        grad = grad_fn(x + delta, segpgd_lambda(i + 1, num_steps))
        return ascent_step(x, delta, grad, eps=eps_b, step_size=step_b, norm=norm, bounds=bounds)

    delta = start_delta(key, x, eps_b, norm, bounds, random_start)
    delta = lax.fori_loop(0, num_steps, body, delta)
    return lax.stop_gradient(clip_to_bounds(x + delta, bounds))


def _run_segpgd(spec, logits_fn, x, y, key, *, eps, step_size, bounds):
    """SegPGD with ``spec.restarts`` restarts; per sample the first that breaks it is kept."""
    one = functools.partial(
        segpgd, logits_fn, x, y, eps=eps, step_size=step_size, num_steps=spec.num_steps,
        norm=spec.norm, random_start=spec.random_start, bounds=bounds,
    )  # fmt: skip
    if spec.restarts == 1:
        return one(key)
    return worst_of_restarts(one, logits_fn, x, y, key, spec.restarts)


register_attack(
    "segpgd",
    AttackDef(
        _run_segpgd,
        ("ce",),
        doc="SegPGD (Gu et al. 2022): pixel CE, correct/wrong pixels weighted 1-l/l, l=(t-1)/2T",
    ),
)
