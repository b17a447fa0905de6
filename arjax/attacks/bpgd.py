"""BPGD: PGD inside a per-sample radius, then bisection onto the decision boundary.

Algorithm 3 of Ma et al., "Increasing-Margin Adversarial (IMA) training to improve
adversarial robustness of neural networks" (the paper's classification experiments use
``N_PGD = 20``, ``N_binary = 10``, step size ``alpha * eps / N_PGD`` with ``alpha = 4``).
The PGD steps are the ones of :func:`arjax.attacks.pgd` (shared through
:func:`arjax.attacks.pgd.ascent_step`); what BPGD adds is a per-sample record of the first
crossing of the decision boundary, kept with masks, and a bisection on that bracket.
The default bracket runs from the clean input to the last misclassified iterate, so that
the boundary point's distance estimates the sample's distance to the boundary (what IMA's
margins are) also from a random start; the literal adjacent-iterates bracket is
``bracket="recorded"`` (see :func:`bpgd`).
"""

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from jax import lax

from arjax.attacks.geometry import clip_to_bounds, lp_norm, per_sample
from arjax.attacks.pgd import (
    ascent_step,
    call_logits_fn,
    check_attack_args,
    objective_grad_fn,
    start_delta,
)
from arjax.losses.classification import predictions_correct
from arjax.types import Array, LogitsFn, PRNGKey, Radius

BRACKETS = ("clean_to_last_wrong", "recorded", "clean_to_last")
SIDES = ("middle", "correct", "wrong")
BPGD_LOSSES = ("ce", "margin")


class BoundaryResult(NamedTuple):
    """What :func:`bpgd` found, per sample (a pytree of arrays).

    Attributes:
      images: float ``[B, ...]`` noisy samples near the decision boundary (gradients
        stopped); ``x`` itself, exactly, where ``crossed`` is False.
      crossed: bool ``[B]``: the search crossed the boundary inside the radius (case-1 of
        Alg. 3), or within ``extend_to`` on the ray (step 4 of :func:`bpgd`); always True
        for samples misclassified at ``x``.
      distance: float ``[B]``: ``lp_norm(images - x)`` in the attack's norm; 0 where
        ``crossed`` is False (and for samples misclassified at ``x``). At most ``eps``,
        except for samples found by the ray extension (``extend_to``).
    """

    images: Array
    crossed: Array
    distance: Array


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}.")


def _rows(mask: Array, x: Array) -> Array:
    """A ``[B]`` mask shaped ``[B, 1, ..., 1]`` to select whole examples of ``x``."""
    return mask.reshape(mask.shape[:1] + (1,) * (x.ndim - 1))


def _ray_point(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    delta: Array,
    radius: Radius,
    norm: str,
    bounds: tuple[float, float] | None,
    correct_fn: Callable[[Array, Array], Array] = predictions_correct,
) -> tuple[Array, Array]:
    """The point at ``radius`` on the ray from ``x`` through ``x + delta``, and its class.

    Returns:
      ``(far [B, ...], wrong bool [B])``: ``far = clip(x + delta * radius / ||delta||) - x``
      (0 where ``delta`` is 0) and whether ``x + far`` is misclassified (one forward pass).
    """
    length = lp_norm(delta, norm)
    radius_b = jnp.broadcast_to(jnp.asarray(radius, x.dtype), length.shape)
    scale = jnp.where(length > 0, radius_b / jnp.where(length > 0, length, 1.0), 0.0)
    far = clip_to_bounds(x + delta * _rows(scale, x), bounds) - x
    return far, ~correct_fn(logits_fn(x + far), y)


def bpgd(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: PRNGKey | None = None,
    *,
    eps: Radius,
    num_steps: int = 20,
    num_bisections: int = 10,
    alpha: float = 4.0,
    step_size: Radius | None = None,
    norm: str = "linf",
    loss: str = "ce",
    random_start: bool = True,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    bracket: str = "clean_to_last_wrong",
    side: str = "middle",
    clean_logits: Array | None = None,
    extend_to: Radius | None = None,
    correct_fn: Callable[[Array, Array], Array] | None = None,
) -> BoundaryResult:
    """Boundary search of IMA (Ma et al., Algorithm 3): PGD in the margin, then bisection.

    1. PGD (:func:`arjax.attacks.pgd`'s step) inside each sample's ball of radius
       ``eps_i``, step ``alpha * eps_i / num_steps``, from ``x`` or a uniform random point
       of the ball. The sequence of iterates is ``x`` (iterate -1), the start (iterate 0),
       then one iterate per step (``num_steps + 2`` points in all).
    2. The bracket ``[x_n1, x_n2]`` (``x_n1`` classified correctly, ``x_n2`` wrongly):

       * ``bracket="clean_to_last_wrong"`` (default): plain PGD for all steps; ``x_n1 = x``
         and ``x_n2`` = the last misclassified iterate (the last iterate when PGD ends
         across the boundary). Crossed iff some iterate is misclassified, as in Alg. 3.
         The boundary point then lies on the ray from ``x`` along the direction PGD
         converged to, so its distance estimates ``x``'s distance to the boundary,
         random start or not: the later iterates have forgotten the random start (in
         l-inf they saturate at ``eps * sign(grad)``), and for a linear model the
         distance is the analytic ``|w.x + b| / ||w||_1`` (l-inf) or ``/ ||w||_2`` (l2)
         whenever ``eps`` exceeds it (l2 from a random start: within ~0.2 %). This is what
         IMA needs: its margin is each sample's estimated distance to the boundary
         (Ma et al., "the margin of a sample is the minimum distance between the sample
         and the decision boundaries"; Alg. 2 line 8 "refine/shrink").
       * ``bracket="recorded"`` (Alg. 3 read literally): per sample, by masks, record the
         first misclassified iterate ``x_n2`` and the iterate before it, ``x_n1``
         (adjacent in the sequence). A sample stops moving once it has crossed, so the
         record is the first crossing. Consequence: with ``random_start`` in high
         dimension, iterate 0 already lies at ``||x_0 - x|| ~ eps`` (in l-inf the largest
         of D uniform coordinates is within ``~eps / D`` of ``eps``; in l2 a uniform point
         of the ball is near its sphere), so every iterate, hence the boundary point, is
         ~``eps`` from ``x``: IMA's margin then only
         grows or holds and never shrinks to the distance (784-D linear, distance 0.05,
         margin 0.3: stays above 0.2). Without a random start the path starts at ``x``
         and the first crossing is the distance (up to the path's bend).
       * ``bracket="clean_to_last"`` (the authors' public code): plain PGD, then
         ``[x_n1, x_n2] = [x, last iterate]``; crossed iff the last iterate is
         misclassified (a crossing PGD wandered back from counts as not crossed).

       No misclassified iterate: case-0, "not crossed".
    3. ``num_bisections`` bisection steps on ``[a, b] = [x_n1, x_n2]``: ``m = (a + b) / 2``;
       ``a <- m`` if ``m`` is classified correctly, else ``b <- m``. The bracket shrinks to
       ``||x_n2 - x_n1|| / 2^num_bisections`` (at most ``step_size / 2^num_bisections``
       for adjacent PGD iterates, ``eps / 2^num_bisections`` for the brackets from
       ``x``), and stays inside the ball and the bounds (both convex).

    4. ``extend_to`` (MMA's adaptive-norm PGD, AN-PGD, Ding et al. 2020; off by default): a sample
       the PGD did not carry across the boundary gets the bracket ``[x_last, x_far]``,
       ``x_far`` the point at distance ``extend_to`` on the ray from ``x`` through the
       last iterate ``x_last`` (clipped to the bounds); it counts as crossed iff ``x_far``
       is misclassified, and bisection then searches the ray beyond the ball. With
       ``bracket="clean_to_last"`` this is AN-PGD's bisection on the ray's length in
       ``[0, eps]`` (crossed inside the ball) or ``[eps, extend_to]`` (not crossed).

    Samples misclassified at ``x`` itself get the bracket ``[x, x]``: crossed True,
    ``images = x``, distance 0. IMA (Alg. 1-2) masks them out by its own classification
    of the clean batch, so what BPGD returns for them is never used for training.

    Cost in model passes: ``num_steps`` forward+backward passes (the correctness of
    iterate t comes from the forward pass that also gives the gradient at iterate t), one
    forward pass for the last iterate, ``num_bisections`` forward passes, plus one forward
    pass at ``x`` when ``random_start`` is True and ``clean_logits`` is not given.

    Args:
      logits_fn: images ``[B, ...]`` -> logits ``[B, K]``, ``[B]`` or ``[B, C]`` (see
        :func:`arjax.losses.classification.head_kind`); correctness is
        :func:`arjax.losses.predictions_correct`.
      x: float ``[B, ...]`` clean inputs.
      y: labels ``[B]`` or multi-hot ``[B, C]``.
      key: PRNG key; required when ``random_start``.
      eps: radii (IMA's margins), python float, 0-d or per-sample ``[B]``, ``>= 0``; may
        be traced (new values do not recompile).
      num_steps: static python int ``>= 0``, ``N_PGD``.
      num_bisections: static python int ``>= 0``, ``N_binary``.
      alpha: step factor: the PGD step is ``alpha * eps / num_steps``.
      step_size: python float or ``[B]``; overrides ``alpha``.
      norm: ``"linf"`` or ``"l2"`` (static).
      loss: PGD objective, ``"ce"`` or ``"margin"`` (static).
      random_start: start PGD at a uniform random point of the ball (static).
      bounds: ``(lo, hi)`` data range, or None for no clipping (static).
      bracket: ``"clean_to_last_wrong"`` (default: the distance estimate IMA intends),
        ``"recorded"`` (Alg. 3 literally; cannot shrink from a random start, see 2.) or
        ``"clean_to_last"`` (authors' code).
      side: which end of the final bracket to return: ``"middle"`` (``(a + b) / 2``,
        default; the paper's point "on the decision boundary"), ``"correct"`` (``a``,
        classified correctly) or ``"wrong"`` (``b``, misclassified).
      clean_logits: logits at ``x`` (same head as ``logits_fn``), used only to find the
        samples misclassified at ``x``; saves the clean forward pass under
        ``random_start``. Pass logits from the same ``logits_fn`` mode as the attack.
      extend_to: None (default: the search stays in the ball), or the radius (float or
        ``[B]``, ``>= eps``) out to which the bracket of samples not crossed inside the
        ball is extended along the ray through their last iterate (step 4).
      correct_fn: ``(logits, y) -> bool [B]``, what "classified correctly" means for the
        crossing record and the bisection; None: :func:`arjax.losses.predictions_correct`
        (for a segmentation head: Dice >= 0.6). IMA's segmentation variant passes
        ``functools.partial(predictions_correct, dice_threshold=t)`` (Ma et al.,
        "Experiments on Segmentation": a sample is correct when its Dice >= 0.6). The
        boundary is then the Dice threshold's level set, not a pixel's decision boundary.

    Returns:
      :class:`BoundaryResult` ``(images [B, ...], crossed bool [B], distance float [B])``,
      all with gradients stopped.

    Raises:
      ValueError: unknown ``norm`` / ``loss`` / ``bracket`` / ``side`` (the message lists
        the valid ones), ``random_start`` without ``key``, non-integer or negative step
        counts, or badly shaped ``eps`` / ``step_size``.
    """
    check_attack_args(norm, loss, num_steps, random_start, key, name="bpgd")
    logits_fn = functools.partial(call_logits_fn, logits_fn)
    is_correct = correct_fn or predictions_correct
    _check_choice("bpgd loss", loss, BPGD_LOSSES)
    _check_choice("bracket", bracket, BRACKETS)
    _check_choice("side", side, SIDES)
    if (
        not isinstance(num_bisections, int)
        or isinstance(num_bisections, bool)
        or num_bisections < 0
    ):
        raise ValueError(f"num_bisections must be a python int >= 0; got {num_bisections!r}.")
    x = lax.stop_gradient(jnp.asarray(x))
    eps_b = per_sample(eps, x)
    if step_size is None:
        step_size = alpha * jnp.asarray(eps) / max(num_steps, 1)
    step_b = per_sample(step_size, x)
    grad_fn = objective_grad_fn(logits_fn, y, loss)
    recorded = bracket == "recorded"
    batch = x.shape[0]

    # Misclassified at x. Without a random start iterate 0 is x, and the loop's first
    # forward pass finds them (``clean_wrong`` is then set at t = 0).
    if clean_logits is not None:
        clean_wrong = ~is_correct(lax.stop_gradient(clean_logits), y)
    elif random_start:
        clean_wrong = ~is_correct(logits_fn(x), y)
    else:
        clean_wrong = jnp.zeros((batch,), jnp.bool_)
    find_clean_in_loop = clean_logits is None and not random_start

    delta = start_delta(key, x, eps_b, norm, bounds, random_start)
    # recorded: crossed samples freeze with delta = x_n2 - x and prev = x_n1 - x.
    delta = jnp.where(_rows(clean_wrong, x), 0.0, delta)
    prev = jnp.zeros_like(x)

    def pgd_body(t, carry):
        delta, prev, crossed, clean_wrong = carry
        grad, logits = grad_fn(x + delta)
        wrong = ~is_correct(logits, y)
        if find_clean_in_loop:
            clean_wrong = jnp.where(t == 0, wrong, clean_wrong)
        stepped = ascent_step(x, delta, grad, eps=eps_b, step_size=step_b, norm=norm, bounds=bounds)
        if bracket == "clean_to_last_wrong":  # ``prev``: the last misclassified iterate
            prev = jnp.where(_rows(wrong, x), delta, prev)
            return stepped, prev, crossed | wrong, clean_wrong
        if not recorded:
            return stepped, prev, crossed, clean_wrong
        crossed = crossed | wrong
        frozen = _rows(crossed, x)
        delta, prev = jnp.where(frozen, delta, stepped), jnp.where(frozen, prev, delta)
        return delta, prev, crossed, clean_wrong

    carry = (delta, prev, clean_wrong, clean_wrong)
    delta, prev, crossed, clean_wrong = lax.fori_loop(0, num_steps, pgd_body, carry)
    wrong_last = ~is_correct(logits_fn(x + delta), y)
    if recorded:
        crossed = crossed | wrong_last
        lo, hi = prev, delta
    elif bracket == "clean_to_last_wrong":
        crossed = crossed | wrong_last | clean_wrong
        hi = jnp.where(_rows(wrong_last, x), delta, prev)
        lo, hi = jnp.zeros_like(x), jnp.where(_rows(clean_wrong, x), 0.0, hi)
    else:
        if find_clean_in_loop and num_steps == 0:
            clean_wrong = wrong_last  # the last iterate is x itself
        crossed = wrong_last | clean_wrong
        lo, hi = jnp.zeros_like(x), jnp.where(_rows(clean_wrong, x), 0.0, delta)
    if extend_to is not None:
        far, wrong_far = _ray_point(logits_fn, x, y, delta, extend_to, norm, bounds, is_correct)
        outside = _rows(~crossed, x)
        lo, hi = jnp.where(outside, delta, lo), jnp.where(outside, far, hi)
        crossed = crossed | wrong_far

    def bisect_body(_, bracket_ends):
        lo, hi = bracket_ends
        mid = 0.5 * (lo + hi)
        correct = _rows(is_correct(logits_fn(x + mid), y), x)
        return jnp.where(correct, mid, lo), jnp.where(correct, hi, mid)

    lo, hi = lax.fori_loop(0, num_bisections, bisect_body, (lo, hi))
    if side == "middle":
        found = 0.5 * (lo + hi)
    else:
        found = lo if side == "correct" else hi
    images = jnp.where(_rows(crossed, x), x + found, x)
    distance = jnp.where(crossed, lp_norm(images - x, norm), 0.0)
    return BoundaryResult(
        images=lax.stop_gradient(images),
        crossed=lax.stop_gradient(crossed),
        distance=lax.stop_gradient(distance),
    )
