"""The minimum-norm attacks of the registry: ``fab``, ``fab-t`` and ``fmn``.

FAB is Croce & Hein 2020 (:mod:`arjax.attacks.fab`), FMN Pintor et al. 2021
(:mod:`arjax.attacks.fmn`); both in l-inf, l2 and l1.

They answer "how far is each example from the decision boundary" rather than "is it
robust at radius eps", so they have two faces:

* :func:`minimum_norm` (the pure function an evaluator calls): a spec such as
  ``"fab:l2:0:100"`` -> :class:`arjax.attacks.fab.MinNormResult` (closest adversarial
  input, its distance, whether one was found), one run giving the whole robust
  accuracy vs radius curve (:mod:`arjax.evaluation.distances`);
* the registered runners (``run_attack(spec, ...)``, the fixed-radius view every other
  attack has): the closest adversarial input found where it lies within the radius,
  else ``x`` (AutoAttack's use of FAB, ``fab_base.py`` ``perturb``).

Spec fields: ``num_steps`` = iterations (AutoAttack: 100); ``restarts`` = FAB runs per
target (the first from ``x``, then random starts; FMN has none and refuses
``restarts > 1``); ``eps`` = the radius of the fixed-radius view and FAB's restart
radius (with ``eps = 0`` in :func:`minimum_norm`, the per-norm default of
:data:`arjax.attacks.fab.RESTART_RADIUS`); ``step_size`` = FMN's first step ``alpha_0``
(default 1; the ``alpha * eps / steps`` rule of the other attacks does not apply).
``fab-t`` targets the 9 highest other classes (AutoAttack's FAB-T). Outputs are
selections, not confidence-degrading points, so they are not ``score_calibrated``.
"""

from arjax.attacks.apgd import DEFAULT_TARGETS
from arjax.attacks.fab import MinNormResult, fab
from arjax.attacks.fmn import STEP_SIZE, fmn
from arjax.attacks.geometry import LP_NORMS
from arjax.attacks.registry import AttackDef, AttackSpec, register_attack
from arjax.types import Array, LogitsFn, PRNGKey, Radius

MIN_NORM_ATTACKS = ("fab", "fab-t", "fmn")


def minimum_norm(
    spec: AttackSpec,
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: PRNGKey | None = None,
    *,
    bounds: tuple[float, float] | None = (0.0, 1.0),
    eps: Radius | None = None,
) -> MinNormResult:
    """Per-example minimal adversarial perturbations of a ``fab`` / ``fab-t`` / ``fmn`` spec.

    Pure and jittable with ``spec`` static.

    Args:
      spec: the attack (see the module docstring for what its fields mean here).
      logits_fn: images ``[B, ...]`` -> logits ``[B, K]``, ``[B]`` / ``[B, 1]`` or ``[B, C]``.
      x: float ``[B, ...]`` clean inputs, inside ``bounds``.
      y: labels: int ``[B]``, ``[B]`` in ``{0, 1}`` or multi-hot ``[B, C]``.
      key: PRNG key (FAB restarts).
      bounds: data range ``(lo, hi)`` or None.
      eps: FAB's restart radius instead of ``spec.eps`` (float or ``[B]``, may be traced).

    Returns:
      :class:`arjax.attacks.fab.MinNormResult` (``images``, ``distance``, ``found``).

    Raises:
      ValueError: a spec of another attack, or ``fmn`` with ``restarts > 1``.
    """
    if spec.attack not in MIN_NORM_ATTACKS:
        valid = ", ".join(MIN_NORM_ATTACKS)
        raise ValueError(f"{spec.attack!r} is not a minimum-norm attack; valid: {valid}")
    if spec.attack == "fmn":
        if spec.restarts != 1:
            raise ValueError(f"fmn has no restarts (restarts={spec.restarts}); use 1")
        step = STEP_SIZE if spec.step_size is None else spec.step_size
        return fmn(
            logits_fn, x, y, norm=spec.norm, num_steps=spec.num_steps, step_size=step,
            bounds=bounds,
        )  # fmt: skip
    radius = eps if eps is not None else (spec.eps or None)
    return fab(
        logits_fn,
        x,
        y,
        key,
        norm=spec.norm,
        num_steps=spec.num_steps,
        restarts=spec.restarts,
        targeted=spec.attack == "fab-t",
        num_targets=DEFAULT_TARGETS,
        eps=radius,
        bounds=bounds,
    )


def _run_min_norm(spec, logits_fn, x, y, key, *, eps, step_size, bounds):
    """The closest adversarial found if within ``eps``, else ``x`` (the fixed-radius view)."""
    del step_size  # FMN's alpha_0 is spec.step_size; the alpha * eps / steps rule is not used
    return minimum_norm(spec, logits_fn, x, y, key, bounds=bounds, eps=eps).within(x, eps)


register_attack(
    "fab",
    AttackDef(
        _run_min_norm,
        ("margin",),
        score_calibrated=False,
        doc="FAB minimum-norm attack (Croce & Hein 2020), kept where within eps",
        norms=LP_NORMS,
    ),
)
register_attack(
    "fab-t",
    AttackDef(
        _run_min_norm,
        ("margin-t",),
        score_calibrated=False,
        doc="targeted FAB over the 9 highest other classes (AutoAttack's FAB-T)",
        norms=LP_NORMS,
    ),
)
register_attack(
    "fmn",
    AttackDef(
        _run_min_norm,
        ("margin",),
        score_calibrated=False,
        doc="FMN minimum-norm attack (Pintor et al. 2021), kept where within eps",
        norms=LP_NORMS,
    ),
)
