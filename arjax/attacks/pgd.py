"""PGD (Madry et al., arXiv 1706.06083) and FGSM as its one-step case.

FGSM is Goodfellow et al., arXiv 1412.6572.

Both are pure functions of arrays: they see the model only through a ``logits_fn`` closure
the caller built (eval-mode statistics by default, DESIGN §3.6), use a static number of
steps in a ``lax.fori_loop``, and are jittable as a whole with the radius traced.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import errors as flax_errors
from jax import lax

from arjax.attacks.eot import RandomizedModel, check_eot, expectation, fixed_draw, is_randomized
from arjax.attacks.geometry import (
    check_norm_name,
    clip_to_bounds,
    per_sample,
    project,
    random_init,
    step_direction,
)
from arjax.attacks.objectives import LOSSES, attack_objective, check_loss_name
from arjax.attacks.registry import DEFAULT_ALPHA, AttackDef, register_attack
from arjax.attacks.selection import worst_of_restarts
from arjax.types import Array, LogitsFn, PRNGKey, Radius


def check_attack_args(
    norm: str, loss: str, num_steps: int, random_start: bool, key: PRNGKey | None, name: str
) -> None:
    """Validate the static arguments shared by the iterative attacks.

    Args:
      norm: must be in ``NORMS``.
      loss: must be in ``LOSSES``.
      num_steps: must be a python int ``>= 0`` (it is a static loop count).
      random_start: whether a PRNG key is needed.
      key: PRNG key or None.
      name: the attack's name, for the messages.

    Raises:
      ValueError: with the valid choices or the expected type in the message.
    """
    check_norm_name(norm)
    check_loss_name(loss)
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 0:
        raise ValueError(f"num_steps must be a python int >= 0; got {num_steps!r}.")
    if random_start and key is None:
        raise ValueError(f"{name} with random_start=True needs a PRNG key.")


def call_logits_fn(logits_fn: LogitsFn, x: Array) -> Array:
    """``logits_fn(x)``, with flax's trace-level error on a train-mode module made plain.

    :func:`pgd` and :func:`arjax.attacks.bpgd` call their ``logits_fn`` through this.

    An NNX module left in train mode (NNX's default) updates its ``BatchStat`` in place
    on every call, which is impossible inside the attack's ``jax.grad`` trace; flax then
    raises ``TraceContextError``. Attacks must see the running statistics (DESIGN §3.6).

    Raises:
      ValueError: on that error, saying to call ``model.eval()`` or use
        ``arjax.models.adapt``.
    """
    try:
        return logits_fn(x)
    except flax_errors.TraceContextError as e:
        raise ValueError(
            "the attacked model mutates its state inside the attack's trace (an NNX module "
            "with BatchNorm left in train mode, NNX's default): call model.eval() before "
            "attacking it, or attack fns.logits_fn(params, batch_stats) of "
            "`fns, params, batch_stats = arjax.models.adapt(model)` (eval statistics)"
        ) from e


def checked_logits_fn(logits_fn: LogitsFn) -> LogitsFn:
    """``logits_fn`` called through :func:`call_logits_fn` (for attacks without a PGD core).

    Raises:
      ValueError: for a :class:`arjax.attacks.eot.RandomizedModel`, which only the
        attacks with an ``eot`` option take.
    """
    if is_randomized(logits_fn):
        raise ValueError(
            "this attack takes a deterministic logits_fn; attack a RandomizedModel with pgd "
            "or apgd (eot=n draws per step), or one draw of it (RandomizedModel.draw(key))"
        )
    return functools.partial(call_logits_fn, logits_fn)


def objective_grad_fn(
    logits_fn: LogitsFn,
    y: Array,
    loss: str,
    *,
    targeted: bool = False,
    clean_logits: Array | None = None,
) -> Callable[[Array], tuple[Array, Array]]:
    """The input gradient of the summed attack objective, with the logits it was taken at.

    The objective is summed over the batch before differentiating: examples are independent,
    so the gradient of the sum w.r.t. example b is the gradient of example b's objective.
    The logits are the auxiliary output of the same forward pass, so an attack that also
    needs predictions at its iterates (BPGD) pays one forward+backward pass per step.

    Args:
      logits_fn: images ``[B, ...]`` -> logits ``[B, K]``, ``[B]`` or ``[B, C]``.
      y: labels ``[B]`` or multi-hot ``[B, C]``.
      loss: a name in ``LOSSES`` (static).
      targeted: minimise the objective instead of maximising it (static).
      clean_logits: logits at the clean input, needed for ``"kl"``; gradients through
        them are stopped.

    Returns:
      ``x_adv [B, ...] -> (grad [B, ...], logits)``, the ascent gradient (negated when
      ``targeted``) and the logits at ``x_adv``.
    """
    sign = -1.0 if targeted else 1.0
    if clean_logits is not None:
        clean_logits = jax.lax.stop_gradient(clean_logits)

    def total_objective(x_adv: Array) -> tuple[Array, Array]:
        logits = logits_fn(x_adv)
        values = attack_objective(loss, logits, y, clean_logits)
        return sign * jnp.sum(values), logits

    return jax.grad(total_objective, has_aux=True)


def start_delta(
    key: PRNGKey | None,
    x: Array,
    eps: Radius,
    norm: str,
    bounds: tuple[float, float] | None,
    random_start: bool,
) -> Array:
    """The perturbation of iterate 0: zero, or a uniform random point of the ball.

    Args:
      key: PRNG key (used only when ``random_start``).
      x: float ``[B, ...]`` clean inputs.
      eps: radius, python float or ``[B]``.
      norm: ``"linf"`` or ``"l2"``.
      bounds: ``(lo, hi)`` or None; ``x + delta`` is clipped to them.
      random_start: static.

    Returns:
      ``delta`` shaped like ``x``, inside the ball and with ``x + delta`` in the bounds.
    """
    if not random_start:
        return jnp.zeros_like(x)
    return clip_to_bounds(x + random_init(key, x, eps, norm), bounds) - x


def ascent_step(
    x: Array,
    delta: Array,
    grad: Array,
    *,
    eps: Radius,
    step_size: Radius,
    norm: str,
    bounds: tuple[float, float] | None,
) -> Array:
    """One PGD step (Madry et al. 2018, Sec. 2.1; Ma et al. Eq. 1) on the perturbation.

    ``delta <- project(delta + step_size * step_direction(grad), eps)``, then
    ``clip(x + delta, bounds) - x``. Both maps are projections onto convex sets, so the
    step moves ``delta`` by at most ``step_size`` in the attack's norm.

    Args:
      x: float ``[B, ...]`` clean inputs.
      delta: float ``[B, ...]`` current perturbation.
      grad: float ``[B, ...]`` ascent gradient at ``x + delta``.
      eps: radius, python float, ``[B]`` or already ``[B, 1, ..., 1]``.
      step_size: same shapes as ``eps``.
      norm: ``"linf"`` or ``"l2"``.
      bounds: ``(lo, hi)`` or None.

    Returns:
      the next ``delta``, shaped like ``x``.
    """
    step_b = per_sample(step_size, x)
    delta = project(delta + step_b * step_direction(grad, norm), eps, norm)
    return clip_to_bounds(x + delta, bounds) - x


def pgd(
    logits_fn: LogitsFn | RandomizedModel,
    x: Array,
    y: Array,
    key: PRNGKey | None = None,
    *,
    eps: Radius,
    step_size: Radius | None = None,
    num_steps: int = 10,
    norm: str = "linf",
    loss: str = "ce",
    random_start: bool = True,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    targeted: bool = False,
    clean_logits: Array | None = None,
    eot: int = 1,
) -> Array:
    """Projected gradient ascent on a per-example objective inside an l-inf or l2 ball.

    Madry et al. (2018), Eq. 2 / Sec. 2.1: start at ``x`` (or at a uniform random point of
    the ball), then ``num_steps`` times
    ``delta <- project(delta + step_size * step_direction(grad), eps)`` and
    ``x_adv <- clip(x + delta, bounds)``, so every iterate, and the result, lies inside
    both the ball and the bounds (given ``x`` itself lies inside the bounds).

    The objective is summed over the batch before ``jax.grad``: examples are independent,
    so the gradient of the sum w.r.t. example b is the gradient of example b's objective.

    Args:
      logits_fn: images ``[B, ...]`` -> logits ``[B, K]``, ``[B]`` or ``[B, C]`` (see
        :func:`arjax.losses.classification.head_kind`); a closure over the parameters; or
        a :class:`arjax.attacks.eot.RandomizedModel` (see ``eot``).
      x: float ``[B, ...]`` clean inputs.
      y: labels ``[B]`` or multi-hot ``[B, C]``; the target labels when ``targeted``.
      key: PRNG key; required when ``random_start`` is True.
      eps: radius; python float, 0-d array or per-sample ``[B]`` (may be traced).
      step_size: python float or ``[B]``; default ``DEFAULT_ALPHA * eps / num_steps`` (4).
      num_steps: static python int ``>= 0``.
      norm: ``"linf"`` or ``"l2"`` (static).
      loss: ``"ce"``, ``"margin"`` or ``"kl"`` (static); see
        :func:`arjax.attacks.objectives.attack_objective`.
      random_start: start from a uniform random point of the ball (static).
      bounds: ``(lo, hi)`` data range, or None for no clipping (static).
      targeted: if True, ``y`` are target labels and the attack *minimises* the objective
        (e.g. the cross-entropy towards them) instead of maximising it (static).
      clean_logits: logits at ``x`` for ``loss="kl"``; computed once here when None.
        Gradients through them are stopped either way. The KL gradient vanishes at ``x``,
        so ``loss="kl"`` wants ``random_start=True`` (TRADES).
      eot: draws of a :class:`arjax.attacks.eot.RandomizedModel` averaged per step
        (Expectation over Transformation, :mod:`arjax.attacks.eot`; static). A
        deterministic ``logits_fn`` ignores it; ``eot=1`` on a randomised model is plain
        PGD on one fresh draw per step.

    Returns:
      ``x_adv`` shaped like ``x``, with gradients stopped.

    Raises:
      ValueError: unknown ``norm`` / ``loss``, ``random_start`` without ``key``, a negative
        or non-integer ``num_steps``, or badly shaped ``eps`` / ``step_size``, a bad ``eot``
        or a randomised model without ``key``.
    """
    check_attack_args(norm, loss, num_steps, random_start, key, name="pgd")
    check_eot(logits_fn, key, eot, name="pgd")
    if not isinstance(logits_fn, RandomizedModel):
        logits_fn = functools.partial(call_logits_fn, logits_fn)
    x = jax.lax.stop_gradient(jnp.asarray(x))
    eps_b = per_sample(eps, x)
    if step_size is None:
        step_size = DEFAULT_ALPHA * jnp.asarray(eps) / max(num_steps, 1)
    step_b = per_sample(step_size, x)
    if loss == "kl" and clean_logits is None:
        clean_logits = expectation(lambda f: f, logits_fn, key, eot)(x, 0)
    grad_at = expectation(
        lambda f: objective_grad_fn(f, y, loss, targeted=targeted, clean_logits=clean_logits),
        logits_fn,
        key,
        eot,
    )

    def body(i: Array, delta: Array) -> Array:
        grad, _ = grad_at(x + delta, i + 1)
        return ascent_step(x, delta, grad, eps=eps_b, step_size=step_b, norm=norm, bounds=bounds)

    delta = start_delta(key, x, eps_b, norm, bounds, random_start)
    delta = lax.fori_loop(0, num_steps, body, delta)
    return jax.lax.stop_gradient(clip_to_bounds(x + delta, bounds))


def fgsm(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    *,
    eps: Radius,
    norm: str = "linf",
    loss: str = "ce",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    targeted: bool = False,
) -> Array:
    """Fast gradient (sign) method: one full step of size ``eps`` from ``x``.

    Goodfellow et al. (2015), Eq. 3: ``x_adv = clip(x + eps * sign(grad_x L))`` for l-inf;
    for l2 the step is ``eps * grad / ||grad||``. Implemented as
    ``pgd(num_steps=1, step_size=eps, random_start=False)``, so the two agree exactly.

    With ``loss="kl"`` the true gradient at ``x`` is zero (the KL to the clean prediction
    has its minimum there), so the computed gradient is rounding noise and the FGSM step
    direction is meaningless; TRADES-style attacks need a random start (use :func:`pgd`).

    Args:
      logits_fn: images ``[B, ...]`` -> logits (see :func:`pgd`).
      x: float ``[B, ...]`` clean inputs.
      y: labels ``[B]`` or multi-hot ``[B, C]`` (targets when ``targeted``).
      eps: radius and step size; python float or per-sample ``[B]``.
      norm: ``"linf"`` or ``"l2"``.
      loss: a name in ``LOSSES`` (``"ce"``, ``"margin"``, ``"kl"``, ``"weighted_bce"``).
      bounds: ``(lo, hi)`` or None.
      targeted: minimise the objective towards the labels ``y``.

    Returns:
      ``x_adv`` shaped like ``x``, with gradients stopped.
    """
    return pgd(
        logits_fn,
        x,
        y,
        None,
        eps=eps,
        step_size=eps,
        num_steps=1,
        norm=norm,
        loss=loss,
        random_start=False,
        bounds=bounds,
        targeted=targeted,
    )


def _run_pgd(spec, logits_fn, x, y, key, *, eps, step_size, bounds):
    """PGD (Madry et al.) with ``spec.restarts`` restarts; the first success is kept."""

    def one(k):
        return pgd(
            logits_fn,
            x,
            y,
            k,
            eps=eps,
            step_size=step_size,
            num_steps=spec.num_steps,
            norm=spec.norm,
            loss=spec.loss,
            random_start=spec.random_start,
            bounds=bounds,
            eot=spec.eot,
        )

    if spec.restarts == 1:
        return one(key)
    return worst_of_restarts(one, fixed_draw(logits_fn, key), x, y, key, spec.restarts)


def _run_fgsm(spec, logits_fn, x, y, key, *, eps, step_size, bounds):
    """FGSM (Goodfellow et al.): one full step of size eps, no random start."""
    del key, step_size
    return fgsm(logits_fn, x, y, eps=eps, norm=spec.norm, loss=spec.loss, bounds=bounds)


register_attack(
    "pgd",
    AttackDef(
        _run_pgd, LOSSES, doc="projected gradient ascent, random start (Madry et al.)", eot=True
    ),
)
register_attack(
    "fgsm",
    AttackDef(_run_fgsm, LOSSES, fixed_steps=1, doc="one signed step of size eps (Goodfellow)"),
)
