"""The AutoAttack ensemble (Croce & Hein 2020, arXiv 2003.01690, Sec. 5) as pure functions.

Versions (``AUTOATTACK_VERSIONS``; the reference's ``set_version`` in
github.com/fra31/auto-attack, ``autoattack.py``, for l-inf and l2):

* ``"standard"``, as published: APGD-CE (no restarts) -> APGD-T (targeted DLR, the 9
  highest other classes) -> FAB-T (:func:`arjax.attacks.fab.fab`, targeted, 9 targets,
  1 restart, 100 iterations; an example counts as broken when FAB-T's closest adversarial
  lies inside the radius) -> Square (5000 queries).
* ``"standard-margin"``: arjax's ensemble before FAB existed, APGD-T with the targeted CW
  margin ``z_t - z_y`` (``"apgd-t-margin"``) in FAB-T's place (like FAB it works on raw
  logit differences, not the scale-invariant DLR ratio).
* ``"rand"``, for randomised models: APGD-CE -> APGD-DLR, no restarts, each gradient the
  mean of 20 draws (Expectation over Transformation, :mod:`arjax.attacks.eot`; pass the
  model as a :class:`arjax.attacks.eot.RandomizedModel`).
* ``"fast"`` (arjax's): APGD-CE -> APGD-T with at most 3 targets, no FAB-T, no Square (a
  cheap lower bound on the standard one's strength, not a replacement for it).

Each attack runs on the whole fixed-shape batch and its result is taken only for the
examples still robust after the previous ones; an example is robust while
:func:`arjax.losses.predictions_correct` holds (for multi-hot labels: all labels right).
"""

import dataclasses

import jax
import jax.numpy as jnp

from arjax.attacks.apgd import DEFAULT_TARGETS, apgd
from arjax.attacks.eot import RandomizedModel, fixed_draw
from arjax.attacks.fab import fab
from arjax.attacks.registry import AttackDef, AttackRunner, register_attack
from arjax.attacks.selection import take_where_broken
from arjax.attacks.square import square
from arjax.losses.classification import predictions_correct
from arjax.types import Array, LogitsFn, PRNGKey, Radius

AUTOATTACK_VERSIONS = ("standard", "standard-margin", "rand", "fast")
SQUARE_QUERIES_PER_STEP = 50  # 5000 Square queries for AutoAttack's 100 APGD iterations
RAND_EOT = 20  # the reference's eot_iter in version "rand"


@dataclasses.dataclass(frozen=True)
class EnsembleMember:
    """One attack of the ensemble (hashable, so it can be a static jit argument).

    Attributes:
      name: ``"apgd-ce"``, ``"apgd-dlr"``, ``"apgd-t"``, ``"apgd-t-margin"``, ``"fab-t"``
        or ``"square"``.
      loss: the APGD loss (``"ce"``, ``"dlr"``, ``"dlr-t"``, ``"margin-t"``), ``"margin"``
        for Square, ``"margin-t"`` for FAB-T (the logit differences it follows).
      num_steps: APGD / FAB iterations or Square queries.
      restarts: random starts (per target for the targeted ones).
      num_targets: target classes of the targeted ones (capped at ``K - 1``).
      eot: draws averaged per APGD gradient (:mod:`arjax.attacks.eot`).
    """

    name: str
    loss: str
    num_steps: int
    restarts: int = 1
    num_targets: int = 1
    eot: int = 1

    def run(
        self,
        logits_fn: LogitsFn | RandomizedModel,
        x: Array,
        y: Array,
        key: PRNGKey,
        *,
        eps: Radius,
        norm: str,
        bounds: tuple[float, float] | None,
    ) -> Array:
        """``x_adv`` of this attack on the whole batch (shaped like ``x``)."""
        if self.name == "fab-t":
            found = fab(
                logits_fn,
                x,
                y,
                key,
                norm=norm,
                num_steps=self.num_steps,
                restarts=self.restarts,
                targeted=True,
                num_targets=self.num_targets,
                eps=eps,
                bounds=bounds,
            )
            return found.within(x, eps)
        if self.name == "square":
            return square(
                logits_fn,
                x,
                y,
                key,
                eps=eps,
                num_queries=self.num_steps,
                norm=norm,
                restarts=self.restarts,
                bounds=bounds,
            )
        return apgd(
            logits_fn,
            x,
            y,
            key,
            eps=eps,
            num_steps=self.num_steps,
            norm=norm,
            loss=self.loss,
            restarts=self.restarts,
            num_targets=self.num_targets,
            bounds=bounds,
            eot=self.eot,
        )


def autoattack_members(
    version: str = "standard",
    *,
    num_steps: int = 100,
    num_targets: int = DEFAULT_TARGETS,
    num_queries: int | None = None,
    restarts: int = 1,
    eot: int = RAND_EOT,
) -> tuple[EnsembleMember, ...]:
    """The attacks of an AutoAttack version, in the order they run.

    Args:
      version: one of ``AUTOATTACK_VERSIONS`` (see the module docstring).
      num_steps: APGD and FAB-T iterations (AutoAttack: 100).
      num_targets: APGD-T and FAB-T targets (AutoAttack: 9; ``"fast"`` uses at most 3).
      num_queries: Square queries; default ``50 * num_steps`` (5000 for 100 steps).
      restarts: random starts of each APGD run (AutoAttack: 1), of FAB-T and of Square.
      eot: draws per gradient of the ``"rand"`` version (AutoAttack: 20).

    Returns:
      the members, e.g. ``(apgd-ce, apgd-t, fab-t, square)``.

    Raises:
      ValueError: for an unknown version.
    """
    if version not in AUTOATTACK_VERSIONS:
        valid = ", ".join(AUTOATTACK_VERSIONS)
        raise ValueError(f"unknown AutoAttack version {version!r}; valid choices: {valid}.")
    if num_queries is None:
        num_queries = SQUARE_QUERIES_PER_STEP * num_steps
    ce = EnsembleMember("apgd-ce", "ce", num_steps, restarts)
    if version == "fast":
        return (ce, EnsembleMember("apgd-t", "dlr-t", num_steps, restarts, min(num_targets, 3)))
    if version == "rand":
        return (
            EnsembleMember("apgd-ce", "ce", num_steps, restarts, eot=eot),
            EnsembleMember("apgd-dlr", "dlr", num_steps, restarts, eot=eot),
        )
    if version == "standard":
        third = EnsembleMember("fab-t", "margin-t", num_steps, restarts, num_targets)
    else:
        third = EnsembleMember("apgd-t-margin", "margin-t", num_steps, restarts, num_targets)
    return (
        ce,
        EnsembleMember("apgd-t", "dlr-t", num_steps, restarts, num_targets),
        third,
        EnsembleMember("square", "margin", num_queries, restarts),
    )


def autoattack_adversarial(
    logits_fn: LogitsFn | RandomizedModel,
    x: Array,
    y: Array,
    key: PRNGKey,
    *,
    eps: Radius,
    norm: str = "linf",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    members: tuple[EnsembleMember, ...] | None = None,
) -> tuple[Array, Array]:
    """The AutoAttack ensemble in one jittable function.

    Every member runs on the full batch (a host-side driver that skips members once no
    example is left is :func:`arjax.evaluation.autoattack`). For a
    :class:`arjax.attacks.eot.RandomizedModel` (version ``"rand"``) which examples are
    broken is judged on one fixed draw of the model (:func:`arjax.attacks.eot.fixed_draw`
    of ``key``), as one query of it would.

    Args:
      logits_fn: inputs ``[B, ...]`` -> logits ``[B, K]``, ``[B]`` or ``[B, C]``, or a
        :class:`arjax.attacks.eot.RandomizedModel`.
      x: float ``[B, ...]`` clean inputs inside ``bounds``.
      y: labels ``[B]`` or multi-hot ``[B, C]``.
      key: PRNG key (member i uses ``fold_in(key, i)``).
      eps: radius; python float or per-sample ``[B]`` (may be traced).
      norm: ``"linf"`` or ``"l2"``.
      bounds: data range or None.
      members: default :func:`autoattack_members` ``("standard")``.

    Returns:
      ``(x_adv [B, ...], robust [M + 1, B])``: per example the output of the first member
      that broke it, else ``x``; ``robust[0]`` is clean correctness and ``robust[i]``
      robustness after members ``1..i``.
    """
    members = autoattack_members() if members is None else members
    x = jax.lax.stop_gradient(jnp.asarray(x))
    judge = fixed_draw(logits_fn, key)
    robust = predictions_correct(judge(x), y)
    x_adv, history = x, [robust]
    for i, member in enumerate(members):
        cand = member.run(
            logits_fn, x, y, jax.random.fold_in(key, i), eps=eps, norm=norm, bounds=bounds
        )
        x_adv, robust = take_where_broken(judge, x_adv, robust, cand, y)
        history.append(robust)
    return x_adv, jnp.stack(history)


def _autoattack_runner(version: str) -> AttackRunner:
    def run(spec, logits_fn, x, y, key, *, eps, step_size, bounds):
        """AutoAttack: ``spec.num_steps`` APGD iterations, 50x as many Square queries."""
        del step_size
        members = autoattack_members(version, num_steps=spec.num_steps, restarts=spec.restarts)
        x_adv, _ = autoattack_adversarial(
            logits_fn, x, y, key, eps=eps, norm=spec.norm, bounds=bounds, members=members
        )
        return x_adv

    return run


register_attack(
    "autoattack",
    AttackDef(
        _autoattack_runner("standard"),
        ("ensemble",),
        score_calibrated=False,
        doc="AutoAttack as published: APGD-CE, APGD-T, FAB-T, Square",
    ),
)
register_attack(
    "autoattack-fast",
    AttackDef(
        _autoattack_runner("fast"),
        ("ensemble",),
        score_calibrated=False,
        doc="APGD-CE then APGD-T over 3 targets (cheap, no Square)",
    ),
)
