"""Auto-PGD (Croce & Hein 2020, arXiv 2003.01690, Algorithm 1) for l-inf and l2 balls.

APGD is PGD with a budget-aware step size: it starts at ``2 * eps``, adds momentum 0.75
(the update of Sec. 3), keeps the best iterate of every example, and at the checkpoints ``w_j``
halves the step of the examples whose objective stalled, restarting them from their best
point. Everything runs on the whole batch at once: per-sample quantities are ``[B]`` arrays
and updates are ``jnp.where`` masks, with static loop counts (``lax.fori_loop``), so one
compiled program serves any radius (``eps`` may be a traced ``[B]`` array).

Objectives (``APGD_LOSSES``): ``"ce"`` and ``"margin"`` as in
:func:`arjax.attacks.objectives.attack_objective`; ``"dlr"`` (Sec. 4) and ``"dlr-t"``
(targeted DLR, Sec. 4) with the fallbacks for heads with too few classes described in
:func:`arjax.attacks.objectives.dlr_objective`; ``"margin-t"`` (targeted CW margin, used by
the AutoAttack ensemble in place of FAB-T).
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from arjax.attacks.eot import RandomizedModel, check_eot, expectation, is_randomized
from arjax.attacks.geometry import (
    check_norm_name,
    clip_to_bounds,
    per_sample,
    project,
    random_init,
    step_direction,
)
from arjax.attacks.objectives import (
    attack_objective,
    dlr_objective,
    targeted_dlr_objective,
    targeted_margin_objective,
)
from arjax.attacks.pgd import checked_logits_fn
from arjax.attacks.registry import AttackDef, register_attack
from arjax.losses.classification import head_kind, predictions_correct
from arjax.types import Array, LogitsFn, PRNGKey, Radius

APGD_LOSSES = ("ce", "dlr", "dlr-t", "margin", "margin-t")
TARGETED_LOSSES = ("dlr-t", "margin-t")
RHO = 0.75  # Sec. 3, condition 1 of the step-size rule
MOMENTUM = 0.75  # Sec. 3, alpha of the momentum update
DEFAULT_TARGETS = 9  # AutoAttack's APGD-T: the 9 highest other classes


def check_apgd_loss(loss: str) -> None:
    """Raise a ValueError listing the valid choices unless ``loss`` is in ``APGD_LOSSES``."""
    if loss not in APGD_LOSSES:
        raise ValueError(f"unknown APGD loss {loss!r}; valid choices: {', '.join(APGD_LOSSES)}.")


def apgd_checkpoints(num_steps: int) -> tuple[int, ...]:
    """The iterations ``w_j = ceil(p_j * N)`` after which APGD may halve its step.

    Sec. 3: ``p_0 = 0``, ``p_1 = 0.22``, ``p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
    0.06)``; the checkpoints ``w_j`` with ``0 < w_j <= N`` (duplicates from rounding at
    small N dropped).

    Args:
      num_steps: N, the static iteration count.

    Returns:
      increasing python ints ``w_1 < w_2 < ...``, each in ``[1, N]``.
    """
    p = [0.0, 0.22]
    while p[-1] <= 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    ws = {math.ceil(round(pj * num_steps, 6)) for pj in p[1:]}
    return tuple(sorted(w for w in ws if 1 <= w <= num_steps))


def top_k_targets(logits: Array, labels: Array, k: int) -> Array:
    """The ``k`` highest-scoring classes other than the label, per example.

    Args:
      logits: float ``[B, K]`` softmax logits (at the clean input).
      labels: int ``[B]``.
      k: static, ``1 <= k <= K - 1``.

    Returns:
      int32 ``[k, B]``: row 0 the highest other class, row 1 the next, ...
    """
    is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
    _, idx = lax.top_k(jnp.where(is_label, -jnp.inf, logits), k)
    return idx.T.astype(jnp.int32)


def _objective(loss: str, logits: Array, y: Array, target: Array | None) -> Array:
    if loss == "dlr":
        return dlr_objective(logits, y)
    if loss == "dlr-t":
        return targeted_dlr_objective(logits, y, target)
    if loss == "margin-t":
        return targeted_margin_objective(logits, y, target)
    return attack_objective(loss, logits, y)


class APGDResult(NamedTuple):
    """One APGD run on a batch.

    Attributes:
      x_adv: ``[B, ...]``: the first misclassified iterate of each example that was
        broken, else its highest-objective iterate.
      broken: bool ``[B]``, some iterate was misclassified.
      best_loss: float ``[B]``, the highest objective seen.
    """

    x_adv: Array
    broken: Array
    best_loss: Array


def _apgd_once(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    target: Array | None,
    key: PRNGKey | None,
    eps_b: Array,
    step0_b: Array,
    *,
    num_steps: int,
    norm: str,
    loss: str,
    random_start: bool,
    bounds: tuple[float, float] | None,
    rho: float,
    momentum: float,
    eot: int,
) -> APGDResult:
    """Algorithm 1 of Croce & Hein (2020) from one start, for the whole batch."""
    bshape = (x.shape[0],) + (1,) * (x.ndim - 1)

    def feasible(z: Array) -> Array:  # P_S: onto the ball around x, then the bounds
        return clip_to_bounds(x + project(z - x, eps_b, norm), bounds)

    def values_grad_logits(f: LogitsFn):
        def total(z: Array) -> tuple[Array, tuple[Array, Array]]:
            logits = f(z)
            values = _objective(loss, logits, y, target)
            return jnp.sum(values), (values, logits)

        value_and_grad = jax.value_and_grad(total, has_aux=True)

        def run(z: Array) -> tuple[Array, Array, Array]:
            (_, (values, logits)), grad = value_and_grad(z)
            return values, grad, logits

        return run

    expected = expectation(values_grad_logits, logits_fn, key, eot)

    def evaluate(z: Array, i: Array) -> tuple[Array, Array, Array]:
        values, grad, logits = expected(z, i)
        return values, grad, predictions_correct(logits, y)

    if random_start:
        x0 = clip_to_bounds(x + random_init(key, x, eps_b, norm), bounds)
    else:
        x0 = x
    loss0, grad0, correct0 = evaluate(x0, 0)
    ckpts = apgd_checkpoints(num_steps)
    is_ckpt = np.zeros(max(num_steps, 1), bool)
    window = np.ones(max(num_steps, 1), np.float32)
    for prev, w in zip((0,) + ckpts[:-1], ckpts, strict=True):
        is_ckpt[w - 1], window[w - 1] = True, w - prev
    is_ckpt, window = jnp.asarray(is_ckpt), jnp.asarray(window)

    state = dict(
        x_cur=x0,
        x_prev=x0,
        grad=grad0,
        loss_cur=loss0,
        x_best=x0,
        grad_best=grad0,
        loss_best=loss0,
        x_broken=x0,
        broken=~correct0,
        step=jnp.broadcast_to(step0_b, bshape).astype(x.dtype),
        increases=jnp.zeros(x.shape[:1], jnp.float32),
        loss_best_last=loss0,
        reduced_last=jnp.zeros(x.shape[:1], jnp.bool_),
    )

    def body(i: Array, s: dict) -> dict:
        # Sec. 3: z = P(x + eta * dir(grad)); x_new = P(x + a (z - x) + (1 - a)(x - x_prev)),
        # with a = 1 at the first iteration.
        a = jnp.where(i == 0, 1.0, momentum).astype(x.dtype)
        z = feasible(s["x_cur"] + s["step"] * step_direction(s["grad"], norm))
        x_new = feasible(s["x_cur"] + a * (z - s["x_cur"]) + (1 - a) * (s["x_cur"] - s["x_prev"]))
        loss_new, grad_new, correct = evaluate(x_new, i + 1)
        newly = ~correct & ~s["broken"]
        x_broken = jnp.where(newly.reshape(bshape), x_new, s["x_broken"])
        broken = s["broken"] | ~correct
        increases = s["increases"] + (loss_new > s["loss_cur"]).astype(jnp.float32)
        better = loss_new > s["loss_best"]
        x_best = jnp.where(better.reshape(bshape), x_new, s["x_best"])
        grad_best = jnp.where(better.reshape(bshape), grad_new, s["grad_best"])
        loss_best = jnp.where(better, loss_new, s["loss_best"])
        # Sec. 3, at a checkpoint w_j: condition 1 (fewer than rho of the steps since
        # w_{j-1} increased the objective) or condition 2 (the step was not halved at
        # w_{j-1} and the best objective has not improved since) -> halve the step and
        # restart from the best point.
        ckpt = is_ckpt[i]
        cond1 = increases < rho * window[i]
        cond2 = ~s["reduced_last"] & (s["loss_best_last"] >= loss_best)
        halve = ckpt & (cond1 | cond2)
        hb = halve.reshape(bshape)
        return dict(
            x_cur=jnp.where(hb, x_best, x_new),
            x_prev=s["x_cur"],
            grad=jnp.where(hb, grad_best, grad_new),
            loss_cur=jnp.where(halve, loss_best, loss_new),
            x_best=x_best,
            grad_best=grad_best,
            loss_best=loss_best,
            x_broken=x_broken,
            broken=broken,
            step=jnp.where(hb, 0.5 * s["step"], s["step"]),
            increases=jnp.where(ckpt, 0.0, increases),
            loss_best_last=jnp.where(ckpt, loss_best, s["loss_best_last"]),
            reduced_last=jnp.where(ckpt, halve, s["reduced_last"]),
        )

    s = lax.fori_loop(0, num_steps, body, state)
    x_adv = jnp.where(s["broken"].reshape(bshape), s["x_broken"], s["x_best"])
    return APGDResult(x_adv, s["broken"], s["loss_best"])


def keep_worst(best: APGDResult, new: APGDResult) -> APGDResult:
    """Per example, the run to keep: broken beats unbroken, then the higher objective.

    Among broken runs the earlier one is kept (the first success, as in AutoAttack).
    """
    take = ~best.broken & (new.broken | (new.best_loss > best.best_loss))
    tb = take.reshape((-1,) + (1,) * (new.x_adv.ndim - 1))
    return APGDResult(
        jnp.where(tb, new.x_adv, best.x_adv),
        best.broken | new.broken,
        jnp.where(take, new.best_loss, best.best_loss),
    )


def apgd_result(
    logits_fn: LogitsFn | RandomizedModel,
    x: Array,
    y: Array,
    key: PRNGKey | None = None,
    *,
    eps: Radius,
    num_steps: int = 100,
    norm: str = "linf",
    loss: str = "ce",
    restarts: int = 1,
    targets: Array | None = None,
    num_targets: int = DEFAULT_TARGETS,
    random_start: bool = True,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    initial_step: Radius | None = None,
    rho: float = RHO,
    momentum: float = MOMENTUM,
    eot: int = 1,
) -> APGDResult:
    """Auto-PGD with restarts (and targets), returning the per-example outcome.

    The algorithm is :func:`apgd`'s. Runs ``restarts`` starts per target (one target
    for untargeted losses) and keeps per example the first run that broke it, else the
    run with the highest objective.

    Args:
      logits_fn: images ``[B, ...]`` -> logits ``[B, K]``, ``[B]`` or ``[B, C]``.
      x: float ``[B, ...]`` clean inputs, inside ``bounds``.
      y: labels: int ``[B]`` (softmax), ``[B]`` in ``{0, 1}`` (one logit) or multi-hot
        ``[B, C]``.
      key: PRNG key for the random starts (required when ``random_start``).
      eps: radius; python float, 0-d or per-sample ``[B]`` array (may be traced).
      num_steps: iterations per run (static).
      norm: ``"linf"`` or ``"l2"`` (static).
      loss: one of ``APGD_LOSSES`` (static): ``"ce"`` (APGD-CE), ``"dlr"`` (APGD-DLR),
        ``"dlr-t"`` (APGD-T), ``"margin"``, ``"margin-t"``. Heads with too few classes for
        the DLR ratio use the margin fallbacks of
        :func:`arjax.attacks.objectives.dlr_objective`.
      restarts: random starts per target (static); each example keeps its worst.
      targets: int ``[B]`` or ``[T, B]`` target classes for the targeted losses; default the
        ``num_targets`` highest other classes at the clean input (:func:`top_k_targets`).
        Ignored (one untargeted run) for single-logit and multi-label heads.
      num_targets: static; capped at ``K - 1``.
      random_start: start from a uniform random point of the ball (static).
      bounds: data range ``(lo, hi)`` or None (static).
      initial_step: the initial step size (python float or ``[B]``); default ``2 * eps``.
      rho: condition-1 threshold (Sec. 3).
      momentum: ``alpha`` of the momentum update.
      eot: draws of a :class:`arjax.attacks.eot.RandomizedModel` averaged per gradient
        (static; AutoAttack's ``eot_iter``): the objective values, gradients and logits of
        each iteration are the mean over the draws. Ignored for a deterministic
        ``logits_fn``.

    Returns:
      ``APGDResult(x_adv, broken [B], best_loss [B])``; ``x_adv`` as :func:`apgd` returns.
    """
    check_norm_name(norm)
    check_apgd_loss(loss)
    check_eot(logits_fn, key, eot, name="apgd")
    if not is_randomized(logits_fn):
        logits_fn = checked_logits_fn(logits_fn)
    for name, value, low in (("num_steps", num_steps, 0), ("restarts", restarts, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be a python int >= {low}; got {value!r}.")
    if key is None:
        if random_start:
            raise ValueError("apgd with random_start=True needs a PRNG key.")
        key = jax.random.PRNGKey(0)
    x = lax.stop_gradient(jnp.asarray(x))
    y = jnp.asarray(y)
    eps_b = per_sample(eps, x)
    step0_b = per_sample(2.0 * jnp.asarray(eps) if initial_step is None else initial_step, x)
    if loss in TARGETED_LOSSES:
        clean_logits = expectation(lambda f: f, logits_fn, key, eot)(x, 0)
        if head_kind(clean_logits, y) == "softmax":
            if targets is None:
                k = max(1, min(num_targets, clean_logits.shape[-1] - 1))
                targets = top_k_targets(clean_logits, y, k)
            targets = jnp.asarray(targets, jnp.int32)
            targets = targets[None] if targets.ndim == 1 else targets
        else:
            targets = jnp.zeros((1,) + x.shape[:1], jnp.int32)  # unused by the fallback
    else:
        targets = jnp.zeros((1,) + x.shape[:1], jnp.int32)
    num_runs = targets.shape[0] * restarts

    def run(r: Array, best: APGDResult) -> APGDResult:
        target = targets[r // restarts] if loss in TARGETED_LOSSES else None
        new = _apgd_once(
            logits_fn,
            x,
            y,
            target,
            jax.random.fold_in(key, r),
            eps_b,
            step0_b,
            num_steps=num_steps,
            norm=norm,
            loss=loss,
            random_start=random_start,
            bounds=bounds,
            rho=rho,
            momentum=momentum,
            eot=eot,
        )
        return keep_worst(best, new)

    init = APGDResult(
        x, jnp.zeros(x.shape[:1], jnp.bool_), jnp.full(x.shape[:1], -jnp.inf, x.dtype)
    )
    out = lax.fori_loop(0, num_runs, run, init)
    return APGDResult(lax.stop_gradient(out.x_adv), out.broken, out.best_loss)


def apgd(
    logits_fn: LogitsFn, x: Array, y: Array, key: PRNGKey | None = None, **options: Any
) -> Array:
    """Auto-PGD (Croce & Hein 2020, arXiv 2003.01690, Algorithm 1), jittable and batched.

    Per example: start at ``x`` or a uniform random point of the ball, step size
    ``eta = 2 eps``; each iteration ``z = P(x_k + eta * dir(grad))`` and
    ``x_{k+1} = P(x_k + 0.75 (z - x_k) + 0.25 (x_k - x_{k-1}))`` (Sec. 3; plain step at
    k = 0), where ``P`` projects onto the ball and the bounds and ``dir`` is the sign (l-inf)
    or the normalised gradient (l2). At the checkpoints of :func:`apgd_checkpoints` the step
    of an example is halved, and it restarts from its best point, when fewer than
    ``rho = 0.75`` of the steps since the last checkpoint increased its objective, or when
    its step was not halved at the last checkpoint and its best objective did not improve.

    Differences from the reference implementation (github.com/fra31/auto-attack), all
    within the paper's description: the random start is uniform in the ball
    (:func:`arjax.attacks.geometry.random_init`) rather than a scaled random direction;
    condition 2 already applies at the first checkpoint (the step is unchanged since
    ``w_0 = 0``), where the reference skips it; condition 1 is the paper's strict ``<``;
    every restart runs on the whole batch (masks, fixed shape) rather than on the examples
    still robust, and examples never broken return their highest-objective point, not
    ``x``.

    Args:
      logits_fn: images ``[B, ...]`` -> logits ``[B, K]``, ``[B]`` or ``[B, C]``.
      x: float ``[B, ...]`` clean inputs, inside ``bounds``.
      y: labels: int ``[B]`` (softmax), ``[B]`` in ``{0, 1}`` (one logit) or multi-hot
        ``[B, C]``.
      key: PRNG key for the random starts (required when ``random_start``).
      **options: the keyword-only arguments of :func:`apgd_result` (``eps`` required;
        ``num_steps``, ``norm``, ``loss``, ``restarts``, ``targets``, ``num_targets``,
        ``random_start``, ``bounds``, ``initial_step``, ``rho``, ``momentum``, ``eot``).

    Returns:
      ``x_adv`` shaped like ``x``, inside the ball and the bounds, gradients stopped: the
      first misclassified iterate where one was found, else the highest-objective one.

    Raises:
      ValueError: unknown norm or loss, non-integer counts, ``random_start`` without key.
    """
    return apgd_result(logits_fn, x, y, key, **options).x_adv


def _run_apgd(spec, logits_fn, x, y, key, *, eps, step_size, bounds):
    """Auto-PGD (Croce & Hein 2020) with ``spec.loss``; the initial step is 2 eps.

    APGD adapts its own step, so the ``alpha * eps / steps`` rule (and the ``step_size``
    argument) is not used; a spec that fixes ``step_size`` sets the initial step instead.
    Targeted losses run ``spec.restarts`` starts for each of the ``DEFAULT_TARGETS`` (9)
    highest other classes (at most K - 1) and keep each example's worst.
    """
    del step_size
    return apgd(
        logits_fn,
        x,
        y,
        key,
        eps=eps,
        num_steps=spec.num_steps,
        norm=spec.norm,
        loss=spec.loss,
        restarts=spec.restarts,
        num_targets=DEFAULT_TARGETS,
        random_start=spec.random_start,
        bounds=bounds,
        initial_step=spec.step_size,
        eot=spec.eot,
    )


for _name, _losses, _doc in (
    ("apgd-ce", ("ce",), "Auto-PGD on the cross-entropy (Croce & Hein 2020)"),
    ("apgd-dlr", ("dlr",), "Auto-PGD on the DLR loss (Croce & Hein 2020)"),
    ("apgd-t", ("dlr-t", "margin-t"), "targeted Auto-PGD over the 9 highest other classes"),
):
    register_attack(_name, AttackDef(_run_apgd, _losses, doc=_doc, eot=True))
