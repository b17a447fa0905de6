"""FMN: Fast Minimum-Norm attack (Pintor, Roli, Brendel, Biggio 2021, NeurIPS, arXiv 2102.12827).

A minimum-norm attack built on projected gradient steps whose radius adapts (the paper's
Algorithm 1, as the authors' code implements it): at every iteration ``k`` with
perturbation ``delta``,

* the logit margin ``L = max_{j != y} z_j - z_y`` (positive iff misclassified; the
  per-head margins of :func:`arjax.attacks.objectives.worst_label_margin`, so one binary
  logit, 2-class and multi-label heads work alike) and its gradient ``g`` are taken;
* the best adversarial ``delta`` so far is kept (smallest lp norm);
* the radius ``eps_k`` is updated: adversarial -> ``min(eps (1 - gamma_k), ||delta*||_p)``;
  not adversarial but one was found before -> ``eps (1 + gamma_k)``; none found yet ->
  ``||delta||_p + |L| / ||g||_q``, the first-order distance to the boundary (q dual to p),
  but at least ``||delta||_p (1 + gamma_k)`` (arjax's guard: an iterate exactly on the
  boundary, ``L = 0`` but not misclassified, would otherwise keep the radius forever, as
  happens on linear models); then capped at the largest perturbation the box allows;
* a step ``delta + alpha_k g / ||g||_2`` (l2-normalised for every p, as all three
  reference codes do), projected onto the lp ball of radius ``eps_k``, then the box.

``alpha_k`` and ``gamma_k`` follow cosine annealing from ``alpha_0`` to ``alpha_0 / 100``
and from ``gamma_0 = 0.05`` to ``0.001``. Defaults are the reference codes'
(``src/attacks/fmn.py`` of github.com/pralab/Fast-Minimum-Norm-FMN-Attack, Foolbox's
``fast_minimum_norm.py``, adversarial-library's ``fmn``): ``alpha_0 = 1``, no adversarial
initialisation (start at ``x``, ``eps_0 = inf``). Like them, the iterate after the last
step is not evaluated. The paper is not among arjax's offline papers (``docs/fidelity.md``).
The whole batch runs at once with masks and a static step count (``lax.fori_loop``), one
forward + backward pass per step.
"""

import math

import jax
import jax.numpy as jnp
from jax import lax

from arjax.attacks.fab import MinNormResult
from arjax.attacks.geometry import (
    LP_NORMS,
    check_norm_name,
    clip_to_bounds,
    dual_norm,
    lp_norm,
    project,
    step_direction,
)
from arjax.attacks.objectives import worst_label_margin
from arjax.attacks.pgd import checked_logits_fn
from arjax.losses.classification import head_kind, predictions_correct
from arjax.types import Array, LogitsFn

STEP_SIZE = 1.0  # alpha_0 of the references
GAMMA, FINAL_GAMMA = 0.05, 0.001  # the radius update factor, cosine-annealed


def _cosine(start: float, end: float, i: Array, num_steps: int) -> Array:
    """``end + (start - end) (1 + cos(pi i / N)) / 2``: ``start`` at ``i = 0``."""
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(math.pi * i / num_steps))


def fmn(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    *,
    norm: str = "l2",
    num_steps: int = 100,
    step_size: float = STEP_SIZE,
    final_step_size: float | None = None,
    gamma: float = GAMMA,
    final_gamma: float = FINAL_GAMMA,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> MinNormResult:
    """Untargeted FMN (Algorithm 1 of Pintor et al. 2021) in l-inf, l2 or l1.

    Args:
      logits_fn: images ``[B, ...]`` -> logits ``[B, K]``, ``[B]`` / ``[B, 1]`` or ``[B, C]``.
      x: float ``[B, ...]`` clean inputs, inside ``bounds``.
      y: labels: int ``[B]``, ``[B]`` in ``{0, 1}`` or multi-hot ``[B, C]``.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``, the norm minimised (static).
      num_steps: iterations ``K`` (static, ``>= 1``; the references' default is 100 in
        Foolbox, 10 in the authors' repository).
      step_size: ``alpha_0``, the first gradient step's l2 length (input units).
      final_step_size: the last step's; default ``step_size / 100``.
      gamma: ``gamma_0``, the first radius update factor.
      final_gamma: the last one.
      bounds: data range ``(lo, hi)`` or None (static).

    Returns:
      :class:`arjax.attacks.fab.MinNormResult`: per example the smallest adversarial
      perturbation among the iterates, its norm, and whether one was found.

    Raises:
      ValueError: unknown norm, bad step count, segmentation logits.
    """
    check_norm_name(norm, LP_NORMS)
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be a python int >= 1; got {num_steps!r}.")
    final_step_size = step_size / 100.0 if final_step_size is None else final_step_size
    logits_fn = checked_logits_fn(logits_fn)
    x = lax.stop_gradient(jnp.asarray(x))
    y = jnp.asarray(y)
    if head_kind(jax.eval_shape(logits_fn, x), y) == "segmentation":
        raise ValueError("FMN needs a classification head; got segmentation logits.")
    b = x.shape[0]
    rows = (b,) + (1,) * (x.ndim - 1)
    if bounds is None:
        worst = jnp.full((b,), jnp.inf, x.dtype)
    else:
        worst = lp_norm(jnp.maximum(x - bounds[0], bounds[1] - x), norm)

    def margin(z):
        logits = logits_fn(z)
        values = worst_label_margin(logits, y)
        return jnp.sum(values), (values, logits)

    margin_grad = jax.grad(margin, has_aux=True)

    def body(i, state):
        delta, radius, best, best_norm, found = state
        alpha = _cosine(step_size, final_step_size, i, num_steps)
        gam = _cosine(gamma, final_gamma, i, num_steps)
        grad, (values, logits) = margin_grad(x + delta)
        adv = ~predictions_correct(logits, y)
        size = lp_norm(delta, norm)
        better = adv & (size < best_norm)
        best = jnp.where(better.reshape(rows), delta, best)
        best_norm = jnp.where(better, size, best_norm)
        found = found | adv
        to_boundary = jnp.abs(values) / jnp.maximum(dual_norm(grad, norm), 1e-12)
        grown = size * (1.0 + gam)  # not in the references: no stall exactly on a tie
        radius = jnp.where(
            adv,
            jnp.minimum(radius * (1.0 - gam), best_norm),
            jnp.where(found, radius * (1.0 + gam), jnp.maximum(size + to_boundary, grown)),
        )
        radius = jnp.minimum(radius, worst)
        delta = project(delta + alpha * step_direction(grad, "l2"), radius, norm)
        delta = clip_to_bounds(x + delta, bounds) - x
        return delta, radius, best, best_norm, found

    init = (
        jnp.zeros_like(x),
        jnp.full((b,), jnp.inf, x.dtype),
        jnp.zeros_like(x),
        jnp.full((b,), jnp.inf, x.dtype),
        jnp.zeros((b,), jnp.bool_),
    )
    _, _, best, best_norm, found = lax.fori_loop(0, num_steps, body, init)
    images = lax.stop_gradient(clip_to_bounds(x + best, bounds))
    return MinNormResult(images, jnp.where(found, lp_norm(images - x, norm), 0.0), found)
