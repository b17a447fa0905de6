"""AutoAttack evaluation (Croce & Hein 2020, arXiv 2003.01690, Sec. 5) on one batch.

The ensemble is :func:`arjax.attacks.ensemble.autoattack_members`: ``"standard"`` runs
APGD-CE -> APGD-T (targeted DLR over the 9 highest other classes) -> FAB-T -> Square
(5000 queries), as published; ``"standard-margin"`` has arjax's earlier APGD-T-margin in
FAB-T's place; ``"rand"`` runs APGD-CE -> APGD-DLR with 20 EoT draws per gradient (a
randomised model, :class:`arjax.attacks.eot.RandomizedModel`, judged on one fixed draw);
``"fast"`` runs APGD-CE -> APGD-T over 3 targets. Each attack is one jitted program on
the whole fixed-shape batch; its output is taken only for the examples still robust, and
attacks are skipped once none is left.

Robustness of an example means :func:`arjax.losses.predictions_correct` at every point
tried: ``argmax == label`` for softmax heads, ``(z > 0) == label`` for a single binary
logit, and the exact match of all C labels for multi-hot multi-label heads (one flipped
label breaks the example).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from arjax.attacks.apgd import DEFAULT_TARGETS
from arjax.attacks.ensemble import EnsembleMember, autoattack_members
from arjax.attacks.eot import fixed_draw
from arjax.attacks.selection import take_where_broken
from arjax.losses import predictions_correct
from arjax.types import Array, LogitsFn, PRNGKey, Radius


@dataclasses.dataclass
class AutoAttackResult:
    """What :func:`autoattack` found on a batch of B examples.

    Attributes:
      attacks: the member names in the order they ran.
      clean_correct: bool ``[B]``, correct at the clean input.
      robust: member name -> bool ``[B]``, still robust after that member and all before
        it (so the last one is the final robustness).
      broken_by: str ``[B]``: ``"clean"`` (misclassified without attack), the name of the
        first member that broke the example, or ``""`` (robust to all).
      x_adv: ``[B, ...]``: the breaking input of each broken example, else the clean one.
      robust_accuracy: mean of the final robust mask.
      clean_accuracy: mean of ``clean_correct``.
    """

    attacks: tuple[str, ...]
    clean_correct: np.ndarray
    robust: dict[str, np.ndarray]
    broken_by: np.ndarray
    x_adv: np.ndarray
    robust_accuracy: float
    clean_accuracy: float

    @property
    def final_robust(self) -> np.ndarray:
        """Bool ``[B]``: robust to every member."""
        return self.robust[self.attacks[-1]] if self.attacks else self.clean_correct

    def accuracy_after(self) -> dict[str, float]:
        """Robust accuracy after each member, e.g. ``{"clean": 0.9, "apgd-ce": 0.5, ...}``."""
        out = {"clean": self.clean_accuracy}
        out.update({name: float(np.mean(self.robust[name])) for name in self.attacks})
        return out


@functools.partial(jax.jit, static_argnames=("logits_fn",))
def _correct(logits_fn, x, y, key):
    return predictions_correct(fixed_draw(logits_fn, key)(x), y)


@functools.partial(jax.jit, static_argnames=("logits_fn", "member", "norm", "bounds"))
def _member_step(logits_fn, member, x, y, key, judge_key, eps, x_adv, robust, *, norm, bounds):
    cand = member.run(logits_fn, x, y, key, eps=eps, norm=norm, bounds=bounds)
    return take_where_broken(fixed_draw(logits_fn, judge_key), x_adv, robust, cand, y)


def autoattack(
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: PRNGKey,
    eps: Radius,
    norm: str = "linf",
    version: str = "standard",
    bounds: tuple[float, float] | None = (0.0, 1.0),
    *,
    num_steps: int = 100,
    num_targets: int = DEFAULT_TARGETS,
    num_queries: int | None = None,
    restarts: int = 1,
    members: tuple[EnsembleMember, ...] | None = None,
) -> AutoAttackResult:
    """Runs the AutoAttack ensemble on one batch and reports per-example robustness.

    Args:
      logits_fn: inputs ``[B, ...]`` -> logits ``[B, K]`` (softmax, K >= 2), ``[B]`` /
        ``[B, 1]`` (one binary logit) or ``[B, C]`` (multi-label); hashable (a jit static
        argument: pass the same function object to reuse the compiled attacks). A
        :class:`arjax.attacks.eot.RandomizedModel` for the ``"rand"`` version.
      x: float ``[B, ...]`` clean inputs inside ``bounds``.
      y: labels: int ``[B]``, ``[B]`` in ``{0, 1}``, or multi-hot ``[B, C]``.
      key: PRNG key; member i uses ``fold_in(key, i)``.
      eps: radius; python float or per-sample ``[B]``.
      norm: ``"linf"`` or ``"l2"``.
      version: one of :data:`arjax.attacks.AUTOATTACK_VERSIONS` (``"standard"``,
        ``"standard-margin"``, ``"rand"``, ``"fast"``).
      bounds: data range ``(lo, hi)`` or None.
      num_steps: APGD and FAB-T iterations (AutoAttack: 100).
      num_targets: APGD-T and FAB-T targets (AutoAttack: 9; capped at K - 1; one
        untargeted run for single-logit and multi-label heads, which have no target
        classes).
      num_queries: Square queries; default ``50 * num_steps``.
      restarts: random starts per APGD run / of Square.
      members: an explicit ensemble instead of ``version`` and the counts above.

    Returns:
      an :class:`AutoAttackResult`; robustness for multi-hot labels is the exact match of
      all labels, as in :func:`arjax.losses.predictions_correct`.
    """
    if members is None:
        members = autoattack_members(
            version,
            num_steps=num_steps,
            num_targets=num_targets,
            num_queries=num_queries,
            restarts=restarts,
        )
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    eps = jnp.broadcast_to(jnp.asarray(eps, x.dtype), x.shape[:1])
    bounds = None if bounds is None else (float(bounds[0]), float(bounds[1]))
    robust_j = _correct(logits_fn, x, y, key)
    clean = np.asarray(robust_j)
    broken_by = np.where(clean, "", "clean").astype(object)
    x_adv, robust = x, {}
    for i, member in enumerate(members):
        before = np.asarray(robust_j)
        if before.any():
            x_adv, robust_j = _member_step(
                logits_fn,
                member,
                x,
                y,
                jax.random.fold_in(key, i),
                key,
                eps,
                x_adv,
                robust_j,
                norm=norm,
                bounds=bounds,
            )
        after = np.asarray(robust_j)
        broken_by[before & ~after] = member.name
        robust[member.name] = after
    final = np.asarray(robust_j)
    return AutoAttackResult(
        attacks=tuple(m.name for m in members),
        clean_correct=clean,
        robust=robust,
        broken_by=broken_by.astype(str),
        x_adv=np.asarray(x_adv),
        robust_accuracy=float(np.mean(final)),
        clean_accuracy=float(np.mean(clean)),
    )
