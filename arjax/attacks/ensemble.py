"""The AutoAttack ensemble (Croce & Hein 2020, arXiv 2003.01690, Sec. 5) as pure functions.

``"standard"``: APGD-CE (no restarts) -> APGD-T (targeted DLR, the 9 highest other
classes) -> a substitute for FAB-T -> Square (5000 queries). FAB-T (Croce & Hein 2020b,
a minimum-norm attack) is not implemented in arjax; its place is taken by APGD with the
targeted CW margin ``z_t - z_y`` over the same targets (``"apgd-t-margin"``): like FAB it
works on the raw logit differences rather than the scale-invariant DLR ratio, so it
covers the cases where DLR's normalisation hurts. ``"fast"``: APGD-CE -> APGD-T with at
most 3 targets, no FAB-T substitute, no Square (a cheap lower bound on the standard one's
strength, not a replacement for it).

Each attack runs on the whole fixed-shape batch and its result is taken only for the
examples still robust after the previous ones; an example is robust while
:func:`arjax.losses.predictions_correct` holds (for multi-hot labels: all labels right).
"""

import dataclasses

import jax
import jax.numpy as jnp

from arjax.attacks.apgd import DEFAULT_TARGETS, apgd
from arjax.attacks.registry import AttackDef, AttackRunner, register_attack
from arjax.attacks.selection import take_where_broken
from arjax.attacks.square import square
from arjax.losses.classification import predictions_correct
from arjax.types import Array, LogitsFn, PRNGKey, Radius

AUTOATTACK_VERSIONS = ("standard", "fast")
SQUARE_QUERIES_PER_STEP = 50  # 5000 Square queries for AutoAttack's 100 APGD iterations


@dataclasses.dataclass(frozen=True)
class EnsembleMember:
    """One attack of the ensemble (hashable, so it can be a static jit argument).

    Attributes:
      name: ``"apgd-ce"``, ``"apgd-t"``, ``"apgd-t-margin"`` or ``"square"``.
      loss: the APGD loss (``"ce"``, ``"dlr-t"``, ``"margin-t"``), ``"margin"`` for Square.
      num_steps: APGD iterations or Square queries.
      restarts: random starts (per target for the targeted ones).
      num_targets: target classes of the targeted ones (capped at ``K - 1``).
    """

    name: str
    loss: str
    num_steps: int
    restarts: int = 1
    num_targets: int = 1

    def run(
        self,
        logits_fn: LogitsFn,
        x: Array,
        y: Array,
        key: PRNGKey,
        *,
        eps: Radius,
        norm: str,
        bounds: tuple[float, float] | None,
    ) -> Array:
        """``x_adv`` of this attack on the whole batch (shaped like ``x``)."""
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
        )


def autoattack_members(
    version: str = "standard",
    *,
    num_steps: int = 100,
    num_targets: int = DEFAULT_TARGETS,
    num_queries: int | None = None,
    restarts: int = 1,
) -> tuple[EnsembleMember, ...]:
    """The attacks of an AutoAttack version, in the order they run.

    Args:
      version: ``"standard"`` or ``"fast"`` (see the module docstring).
      num_steps: APGD iterations (AutoAttack: 100).
      num_targets: APGD-T targets (AutoAttack: 9; ``"fast"`` uses at most 3).
      num_queries: Square queries; default ``50 * num_steps`` (5000 for 100 steps).
      restarts: random starts of each APGD run (AutoAttack: 1) and of Square.

    Returns:
      the members, e.g. ``(apgd-ce, apgd-t, apgd-t-margin, square)``.

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
    return (
        ce,
        EnsembleMember("apgd-t", "dlr-t", num_steps, restarts, num_targets),
        EnsembleMember("apgd-t-margin", "margin-t", num_steps, restarts, num_targets),
        EnsembleMember("square", "margin", num_queries, restarts),
    )


def autoattack_adversarial(
    logits_fn: LogitsFn,
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
    example is left is :func:`arjax.evaluation.autoattack.autoattack`).

    Args:
      logits_fn: inputs ``[B, ...]`` -> logits ``[B, K]``, ``[B]`` or ``[B, C]``.
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
    robust = predictions_correct(logits_fn(x), y)
    x_adv, history = x, [robust]
    for i, member in enumerate(members):
        cand = member.run(
            logits_fn, x, y, jax.random.fold_in(key, i), eps=eps, norm=norm, bounds=bounds
        )
        x_adv, robust = take_where_broken(logits_fn, x_adv, robust, cand, y)
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
        doc="AutoAttack: APGD-CE, APGD-T, APGD-T-margin (for FAB-T), Square",
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
