"""FAB: the Fast Adaptive Boundary attack (Croce & Hein 2020, ICML, arXiv 1907.02044).

A minimum-norm attack: it looks for the adversarial input closest to ``x`` in l-inf, l2 or
l1, with no radius to respect. At the iterate ``x_i`` it linearises the classifier,
takes the linearised decision hyperplane closest to ``x_i`` (the class ``s`` minimising
``|f_s - f_c| / ||grad(f_s - f_c)||_q``, q dual to p), and projects both ``x_i`` and the
original ``x`` onto it inside the box (:func:`arjax.attacks.hyperplane.hyperplane_step`).
The next iterate is the convex combination of the two overshot projections,

    x_{i+1} = clip((1 - alpha) (x_i + eta d_i) + alpha (x + eta d_orig)),
    alpha = min(||d_i|| / (||d_i|| + ||d_orig||), alpha_max),

which keeps it close to ``x`` ("adaptive"). Whenever an iterate is adversarial it is
recorded if closer than the best so far and the search steps back towards ``x``:
``x_{i+1} <- (1 - beta) x + beta x_{i+1}``. Restarts begin at a random point
at norm ``min(best, eps) / 2`` around ``x`` (the original code, github.com/fra31/fab-attack;
AutoAttack's copy uses ``eps / 2``, which is the same for every example not yet broken).
The targeted version (FAB-T, AutoAttack) uses only the hyperplane between the label and
one target class, for each of the highest-scoring other classes in turn. The paper is not
among arjax's offline papers; the steps and constants above are read from the authors'
code (``fab_base.py``, ``fab_projections.py`` of auto-attack; ``FAB_linf_pt.py`` of
fab-attack), see ``docs/fidelity.md``.

Heads (:func:`arjax.losses.classification.head_kind`): the decision is described by
boundary functions ``g_j`` (``[B, M]``), the example misclassified once one is positive:
softmax ``g_j = z_j - z_y`` for ``j != y`` (``M = K``, the label's own column ignored), so a
2-class head has one hyperplane; one binary logit ``g = -(2y - 1) z`` (``M = 1``, the same
hyperplane as the 2-class head ``[0, z]``); multi-label the per-label margins
``g_c = -(2 y_c - 1) z_c`` (``M = C``: flipping any label breaks the exact match). FAB-T on
a head without classes to target (one logit, multi-label) is untargeted FAB.
Segmentation heads are refused (no per-pixel boundary distance here).

Every example runs in one fixed-shape batch with masks; the gradients of all ``M``
boundary functions come from one ``jax.jacrev`` (``M`` backward passes), plus one forward
pass per iteration to check the new iterate.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from arjax.attacks.apgd import DEFAULT_TARGETS, top_k_targets
from arjax.attacks.geometry import (
    LP_NORMS,
    check_norm_name,
    clip_to_bounds,
    dual_norm,
    lp_norm,
    per_sample,
)
from arjax.attacks.hyperplane import hyperplane_step
from arjax.attacks.pgd import checked_logits_fn
from arjax.losses.classification import head_kind, predictions_correct
from arjax.types import Array, LogitsFn, PRNGKey, Radius

ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9  # AutoAttack's FABAttack and fab-attack's defaults
# The radius of the random restarts, per norm, when none is given (AutoAttack's FAB default).
RESTART_RADIUS = {"linf": 0.3, "l2": 1.0, "l1": 5.0}


class MinNormResult(NamedTuple):
    """What a minimum-norm attack found, per example (a pytree of arrays).

    Convention (no inf or NaN in the arrays): ``found`` says whether an adversarial input
    was found; ``images`` is the closest one found, else ``x`` itself; ``distance`` is
    ``lp_norm(images - x)``, so 0 where ``found`` is False and 0 for examples already
    misclassified at ``x`` (``found`` True, ``images == x``).
    :meth:`min_distance` turns this into the distance the robustness curve reads.

    Attributes:
      images: float ``[B, ...]``, inside the bounds, gradients stopped.
      distance: float ``[B]``, in the attack's norm.
      found: bool ``[B]``.
    """

    images: Array
    distance: Array
    found: Array

    def min_distance(self) -> Array:
        """``distance``, ``+inf`` where nothing was found: robust at every radius."""
        return jnp.where(self.found, self.distance, jnp.inf)

    def within(self, x: Array, eps: Radius) -> Array:
        """The fixed-radius view: ``images`` where found at distance ``<= eps``, else ``x``."""
        eps_flat = jnp.broadcast_to(jnp.reshape(per_sample(eps, x), (-1,)), x.shape[:1])
        take = self.found & (self.distance <= eps_flat)
        return jnp.where(take.reshape((-1,) + (1,) * (x.ndim - 1)), self.images, x)


def boundary_values(logits: Array, y: Array, target: Array | None = None) -> Array:
    """The boundary functions ``g [B, M]``: the example is misclassified once one is > 0.

    Args:
      logits: ``[B, K]`` (softmax), ``[B]`` / ``[B, 1]`` (one binary logit) or ``[B, C]``.
      y: int ``[B]``, ``[B]`` in ``{0, 1}`` or multi-hot ``[B, C]``.
      target: int ``[B]`` target classes (softmax only): ``g = z_t - z_y``, ``M = 1``.

    Returns:
      float ``[B, M]``; for softmax heads without a target, the label's own column is 0
      (its gradient too) and is no hyperplane (FAB skips it).
    """
    kind = head_kind(logits, y)
    if kind == "segmentation":
        raise ValueError("FAB needs a classification head; got segmentation logits.")
    if kind == "binary":
        z = logits.reshape(logits.shape[0], 1)
        return -(2.0 * jnp.reshape(y, (-1, 1)).astype(z.dtype) - 1.0) * z
    if kind == "multilabel":
        return -(2.0 * y.astype(logits.dtype) - 1.0) * logits
    z_label = jnp.take_along_axis(logits, y[:, None].astype(jnp.int32), axis=1)
    if target is not None:
        return jnp.take_along_axis(logits, target[:, None], axis=1) - z_label
    return logits - z_label


def _fab_run(logits_fn, x, y, target, start, best, *, kind, norm, num_steps, bounds, alpha_max,
             eta, beta):  # fmt: skip
    """One FAB run from ``start``, improving ``best = (images, distance)``."""
    b = x.shape[0]
    rows = (b,) + (1,) * (x.ndim - 1)
    x0 = x.reshape(b, -1)

    def boundaries(z):
        def summed(z):
            g = boundary_values(logits_fn(z), y, target)
            return jnp.sum(g, axis=0), g

        jac, g = jax.jacrev(summed, has_aux=True)(z)  # jac [M, B, ...]
        return g, jnp.moveaxis(jac, 0, 1).reshape(b, g.shape[1], -1)

    def body(_, state):
        x1, best_x, best_d = state
        g, grads = boundaries(x1)
        valid = jnp.ones(g.shape, jnp.bool_)
        if kind == "softmax" and target is None:  # the label's own column
            valid = ~jax.nn.one_hot(y, g.shape[1], dtype=jnp.bool_)
        dual = dual_norm(grads.reshape(b * g.shape[1], -1), norm).reshape(g.shape)
        ratio = jnp.where(valid, jnp.abs(g) / (dual + 1e-12), jnp.inf)
        s = jnp.argmin(ratio, axis=1)[:, None]
        c1 = jnp.take_along_axis(g, s, axis=1)[:, 0]
        w = jnp.take_along_axis(grads, s[:, :, None], axis=1)[:, 0]
        x1f = x1.reshape(b, -1)
        c0 = c1 + jnp.sum(w * (x0 - x1f), axis=1)  # the same hyperplane, seen from x
        d1 = hyperplane_step(x1f, w, c1, norm, bounds)
        d0 = hyperplane_step(x0, w, c0, norm, bounds)
        a1 = jnp.maximum(lp_norm(d1, norm), 1e-8)
        a0 = jnp.maximum(lp_norm(d0, norm), 1e-8)
        alpha = jnp.clip(a1 / (a1 + a0), 0.0, alpha_max)[:, None]
        new = (1.0 - alpha) * (x1f + eta * d1) + alpha * (x0 + eta * d0)
        new = clip_to_bounds(new.reshape(x.shape), bounds)
        adv = ~predictions_correct(logits_fn(new), y)
        dist = lp_norm(new - x, norm)
        better = adv & (dist < best_d)
        best_x = jnp.where(better.reshape(rows), new, best_x)
        best_d = jnp.where(better, dist, best_d)
        x1 = jnp.where(adv.reshape(rows), x + beta * (new - x), new)
        return x1, best_x, best_d

    _, best_x, best_d = lax.fori_loop(0, num_steps, body, (start, *best))
    return best_x, best_d


def _random_start(key, x, radius, norm, bounds):
    """``x + radius / 2 * t / ||t||_p`` (t uniform for l-inf, gaussian otherwise), clipped."""
    if norm == "linf":
        t = jax.random.uniform(key, x.shape, x.dtype, minval=-1.0, maxval=1.0)
    else:
        t = jax.random.normal(key, x.shape, x.dtype)
    length = jnp.maximum(lp_norm(t, norm), 1e-12)
    scale = (0.5 * radius / length).reshape((-1,) + (1,) * (x.ndim - 1))
    return clip_to_bounds(x + scale * t, bounds)


def fab(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: PRNGKey | None = None,
    *,
    norm: str = "linf",
    num_steps: int = 100,
    restarts: int = 1,
    targeted: bool = False,
    num_targets: int = DEFAULT_TARGETS,
    eps: Radius | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    alpha_max: float = ALPHA_MAX,
    eta: float = ETA,
    beta: float = BETA,
) -> MinNormResult:
    """FAB (untargeted) or FAB-T (targeted): the smallest adversarial perturbation found.

    Untargeted: ``restarts`` runs of ``num_steps`` iterations, the first from ``x``, the
    others from random points (module docstring). Targeted: the same for each of the
    ``num_targets`` highest other classes at ``x`` (capped at ``K - 1``; AutoAttack's
    FAB-T: 9 targets, 1 restart, 100 iterations), one hyperplane per run. Every run
    improves the per-example best, so the result is the closest adversarial of all runs.

    Args:
      logits_fn: images ``[B, ...]`` -> logits ``[B, K]``, ``[B]`` / ``[B, 1]`` or
        ``[B, C]`` (module docstring for how each head is read).
      x: float ``[B, ...]`` clean inputs, inside ``bounds``.
      y: labels: int ``[B]``, ``[B]`` in ``{0, 1}`` or multi-hot ``[B, C]``.
      key: PRNG key; required when ``restarts > 1``.
      norm: ``"linf"``, ``"l2"`` or ``"l1"``, the norm minimised (static).
      num_steps: iterations per run (static; AutoAttack: 100).
      restarts: runs per target (static, ``>= 1``).
      targeted: FAB-T (static).
      num_targets: target classes of FAB-T (static).
      eps: radius of the random restarts (float or ``[B]``); default ``RESTART_RADIUS``.
      bounds: data range ``(lo, hi)`` or None (static).
      alpha_max: the cap of the step towards ``x`` (0.1).
      eta: overshoot of the projections (1.05).
      beta: backward step after an adversarial iterate (0.9).

    Returns:
      :class:`MinNormResult`: per example the closest adversarial input found, its
      distance, and whether one was found.

    Raises:
      ValueError: unknown norm, bad counts, restarts without a key, segmentation logits.
    """
    check_norm_name(norm, LP_NORMS)
    for name, value, low in (("num_steps", num_steps, 0), ("restarts", restarts, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be a python int >= {low}; got {value!r}.")
    if restarts > 1 and key is None:
        raise ValueError("fab with restarts > 1 needs a PRNG key.")
    key = jax.random.PRNGKey(0) if key is None else key
    logits_fn = checked_logits_fn(logits_fn)
    x = lax.stop_gradient(jnp.asarray(x))
    y = jnp.asarray(y)
    radius = jnp.broadcast_to(
        jnp.reshape(per_sample(RESTART_RADIUS[norm] if eps is None else eps, x), (-1,)),
        x.shape[:1],
    )
    clean = logits_fn(x)
    kind = head_kind(clean, y)
    targeted = targeted and kind == "softmax"
    if targeted:
        targets = top_k_targets(clean, y, max(1, min(num_targets, clean.shape[-1] - 1)))
    else:
        targets = jnp.zeros((1,) + x.shape[:1], jnp.int32)
    found0 = ~predictions_correct(clean, y)
    best = (x, jnp.where(found0, 0.0, jnp.inf).astype(x.dtype))

    def run(r, best):
        rand = _random_start(jax.random.fold_in(key, r), x, jnp.minimum(best[1], radius), norm,
                             bounds)  # fmt: skip
        start = jnp.where(r % restarts == 0, x, rand)
        target = targets[r // restarts] if targeted else None
        return _fab_run(logits_fn, x, y, target, start, best, kind=kind, norm=norm,
                        num_steps=num_steps, bounds=bounds, alpha_max=alpha_max, eta=eta,
                        beta=beta)  # fmt: skip

    best_x, best_d = lax.fori_loop(0, targets.shape[0] * restarts, run, best)
    found = jnp.isfinite(best_d)
    return MinNormResult(lax.stop_gradient(best_x), jnp.where(found, best_d, 0.0), found)
