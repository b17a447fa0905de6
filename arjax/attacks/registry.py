"""One attack registry: an :class:`AttackSpec` parsed once, one :func:`run_attack`.

Training methods (``method.attack``), the final evaluation (``eval.attacks``), the
``arjax-evaluate --attack`` flag and the benchmarks all name an attack the same way,
``"name:norm:eps[:steps]"`` (e.g. ``"pgd:l2:0.5:100"``, ``"fgsm:linf:8/255"``,
``"apgd-ce:l2:0.5"``, ``"square:linf:0.03:5000"``, ``"autoattack:linf:8/255"``), and all
run it through :func:`run_attack`. Adding an attack is one module in ``arjax/attacks/``
with a runner, one :func:`register_attack` call at the bottom of this file, and its tests.

The step-size rule is stated here once: a step of ``alpha * eps / steps`` with
``alpha = DEFAULT_ALPHA = 4`` (the IMA paper's convention, which every arjax caller has
used; Madry et al.'s 2.5 is ``alpha=2.5``), unless the spec fixes ``step_size``.
"""

import dataclasses
from collections.abc import Callable, Mapping
from fractions import Fraction
from typing import Any, Protocol

import jax
import numpy as np

from arjax.attacks.apgd import DEFAULT_TARGETS, apgd
from arjax.attacks.ensemble import autoattack_adversarial, autoattack_members, take_where_broken
from arjax.attacks.eot import fixed_draw
from arjax.attacks.geometry import NORMS
from arjax.attacks.objectives import LOSSES
from arjax.attacks.pgd import DEFAULT_ALPHA, fgsm, pgd
from arjax.attacks.square import square
from arjax.losses import predictions_correct
from arjax.types import Array, LogitsFn, PRNGKey, Radius

_REQUIRED = ("attack", "norm", "eps", "num_steps")
FORMAT = "attack:norm:eps[:steps], e.g. pgd:linf:0.01:20 or fgsm:linf:8/255"


class SpecError(ValueError):
    """An attack spec names an unknown attack/norm/loss or an out-of-range number.

    ``arjax.config_lib.ConfigError`` subclasses ValueError too, and the callers that
    read specs from a config re-raise this as a ConfigError naming the field.
    """


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One attack, fully specified (hashable: usable as a static jit argument).

    Attributes:
      attack: registered attack name (``"pgd"``, ``"fgsm"``, ...).
      norm: ``"linf"`` or ``"l2"``.
      eps: radius >= 0.
      num_steps: iterations (1 for one-step attacks).
      loss: attack objective (see ``arjax.attacks.LOSSES`` and each attack's own).
      alpha: step factor of the step-size rule ``alpha * eps / num_steps``.
      step_size: a fixed step size instead of the rule, or None.
      restarts: random restarts (the worst case over them is kept).
      random_start: start from a random point of the ball.
      eot: draws of a randomised model averaged per gradient (Expectation over
        Transformation, :mod:`arjax.attacks.eot`; attacks registered with ``eot=True``).
    """

    attack: str
    norm: str
    eps: float
    num_steps: int
    loss: str = "ce"
    alpha: float = DEFAULT_ALPHA
    step_size: float | None = None
    restarts: int = 1
    random_start: bool = True
    eot: int = 1

    @property
    def name(self) -> str:
        """Short key used in reports: ``fgsm_linf_0.01``, ``pgd20_l2_0.5``, ``..._eot20``."""
        steps = "" if ATTACKS[self.attack].fixed_steps else str(self.num_steps)
        eot = f"_eot{self.eot}" if self.eot != 1 else ""
        return f"{self.attack}{steps}_{self.norm}_{self.eps:g}{eot}"

    def step_for(self, eps: Radius) -> Radius:
        """The step size at radius ``eps`` (python float or array, kept in its type).

        A numpy ``eps`` gives a float32 array.
        """
        if self.step_size is not None:
            if isinstance(eps, np.ndarray):
                return np.full(eps.shape, self.step_size, np.float32)
            return self.step_size
        if isinstance(eps, np.ndarray):
            return (self.alpha * eps / self.num_steps).astype(np.float32)
        return self.alpha * eps / self.num_steps

    def with_eps(self, eps: float) -> "AttackSpec":
        """The same attack at another radius."""
        return dataclasses.replace(self, eps=float(eps))

    def to_dict(self) -> dict[str, Any]:
        """JSON fields with the name; optional fields only where they are not the default."""
        out = {"name": self.name}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in _REQUIRED or value != field.default:
                out[field.name] = value
        return out


class AttackRunner(Protocol):
    """What a registered attack implements (pure, jittable with ``spec`` static)."""

    def __call__(
        self,
        spec: AttackSpec,
        logits_fn: LogitsFn,
        x: Array,
        y: Array,
        key: PRNGKey | None,
        *,
        eps: Radius,
        step_size: Radius | None,
        bounds: tuple[float, float] | None,
    ) -> Array:
        """Returns ``x_adv`` for ``x`` (see :func:`run_attack` for the arguments)."""
        ...


@dataclasses.dataclass(frozen=True)
class AttackDef:
    """A registered attack.

    Attributes:
      runner: the :class:`AttackRunner`.
      losses: objectives the attack accepts.
      fixed_steps: the step count when the attack has one (FGSM: 1), else None.
      gradient_free: True for score-based (black-box) attacks.
      score_calibrated: False when the output is a per-example selection among attacks
        (AutoAttack keeps the first input that flips the label, and the clean input where
        none does): its scores are not made to degrade a ranking, so an AUC on them is
        not an "AUC under attack" and evaluation reports leave it out.
      doc: one line for ``--help`` and error messages.
      norms: the norms the attack takes (``"l1"`` only the minimum-norm attacks).
      eot: whether ``AttackSpec.eot`` (averaged draws of a randomised model) applies.
    """

    runner: AttackRunner
    losses: tuple[str, ...]
    fixed_steps: int | None = None
    gradient_free: bool = False
    score_calibrated: bool = True
    doc: str = ""
    norms: tuple[str, ...] = NORMS
    eot: bool = False


ATTACKS: dict[str, AttackDef] = {}


def register_attack(name: str, definition: AttackDef) -> None:
    """Adds ``name`` to the registry (an error if it is taken)."""
    if name in ATTACKS:
        raise ValueError(f"attack {name!r} is registered twice")
    ATTACKS[name] = definition


def parse_eps(value: Any, where: str) -> float:
    """A radius from a number or a string such as ``"0.03"`` or ``"8/255"``."""
    try:
        eps = float(Fraction(value)) if isinstance(value, str) else float(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise SpecError(f"eps {value!r} in {where} is not a number; format {FORMAT}") from None
    if not eps >= 0:
        raise SpecError(f"eps={eps!r} in {where} is out of range; valid: [0, inf)")
    return eps


def make_spec(
    attack: str,
    norm: str,
    eps: Any,
    num_steps: Any,
    *,
    where: str = "attack",
    **options: Any,
) -> AttackSpec:
    """A validated :class:`AttackSpec`; ``where`` is named in errors (a config field)."""
    if attack not in ATTACKS:
        valid = ", ".join(sorted(ATTACKS))
        raise SpecError(f"unknown attack {attack!r} in {where}; valid choices: {valid}")
    definition = ATTACKS[attack]
    if norm not in definition.norms:
        valid = ", ".join(definition.norms)
        raise SpecError(f"unknown norm {norm!r} in {where}; valid choices: {valid} ({attack})")
    eps = parse_eps(eps, where)
    try:
        steps = int(num_steps)
    except (TypeError, ValueError):
        raise SpecError(f"steps {num_steps!r} in {where} is not an integer; {FORMAT}") from None
    if definition.fixed_steps is not None:
        steps = definition.fixed_steps
    if steps < 1:
        raise SpecError(f"steps={steps} in {where} is out of range; valid: [1, inf)")
    # an attack's first loss is its default (pgd: "ce", apgd-dlr: "dlr")
    options = {"loss": definition.losses[0], **options}
    spec = AttackSpec(attack, norm, eps, steps, **options)
    if spec.loss not in definition.losses:
        valid = ", ".join(definition.losses)
        raise SpecError(f"attack {attack!r} in {where} has no loss {spec.loss!r}; valid: {valid}")
    if spec.restarts < 1:
        raise SpecError(f"restarts={spec.restarts} in {where} is out of range; valid: [1, inf)")
    if not spec.alpha > 0:
        raise SpecError(f"alpha={spec.alpha} in {where} is out of range; valid: (0, inf)")
    if not isinstance(spec.eot, int) or spec.eot < 1 or (spec.eot > 1 and not definition.eot):
        with_eot = ", ".join(sorted(n for n, d in ATTACKS.items() if d.eot))
        raise SpecError(f"eot={spec.eot!r} in {where}: an int >= 1, > 1 only for {with_eot}")
    return spec


def parse_attack(
    spec: Any, *, default_steps: int, where: str = "eval.attacks", **options: Any
) -> AttackSpec:
    """One spec: ``"attack:norm:eps[:steps]"`` or a mapping with those keys.

    Args:
      spec: e.g. ``"pgd:l2:0.5:50"``, ``"fgsm:linf:8/255"`` or
        ``{"attack": "fgsm", "norm": "linf", "eps": 0.01}`` (a mapping may also set
        ``loss``, ``alpha``, ``step_size``, ``restarts``, ``random_start``).
      default_steps: steps when the spec gives none.
      where: the config field or flag named in errors.
      **options: defaults for the optional :class:`AttackSpec` fields.

    Raises:
      SpecError: naming ``where``, the format and the valid choices.
    """
    if isinstance(spec, AttackSpec):
        return spec
    if hasattr(spec, "keys"):
        spec = dict(spec.items()) if not isinstance(spec, Mapping) else dict(spec)
        known = {f.name for f in dataclasses.fields(AttackSpec)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise SpecError(f"{where} has unknown keys {unknown}; valid: {sorted(known)}")
        attack, norm = spec.pop("attack", None), spec.pop("norm", "linf")
        eps, steps = spec.pop("eps", None), spec.pop("num_steps", default_steps)
        return make_spec(attack, norm, eps, steps, where=where, **{**options, **spec})
    if not isinstance(spec, str):
        raise SpecError(f"{where}={spec!r} must be a string {FORMAT}")
    parts = spec.split(":")
    if len(parts) not in (3, 4):
        raise SpecError(f"{where}={spec!r} is not {FORMAT}")
    steps = parts[3] if len(parts) == 4 else default_steps
    return make_spec(parts[0], parts[1], parts[2], steps, where=where, **options)


def run_attack(
    spec: AttackSpec,
    logits_fn: LogitsFn,
    x: Array,
    y: Array,
    key: PRNGKey | None,
    *,
    eps: Radius | None = None,
    step_size: Radius | None = None,
    bounds: tuple[float, float] | None = (0.0, 1.0),
) -> Array:
    """Runs the attack ``spec`` names; pure and jittable with ``spec`` static.

    Args:
      spec: the attack.
      logits_fn: images ``[B, ...]`` -> logits (a closure over the parameters).
      x: clean inputs ``[B, ...]``.
      y: labels ``[B]`` or multi-hot ``[B, C]``.
      key: PRNG key (random starts, restarts, sampling attacks).
      eps: radius overriding ``spec.eps``: a float or per-sample ``[B]`` (may be traced).
      step_size: step overriding the spec's rule (same shapes as ``eps``).
      bounds: data range ``(lo, hi)`` or None.

    Returns:
      ``x_adv`` shaped like ``x``, inside the ball and the bounds, gradients stopped.
    """
    definition = ATTACKS[spec.attack]
    if spec.loss not in definition.losses:
        valid = ", ".join(definition.losses)
        raise SpecError(f"attack {spec.attack!r} has no loss {spec.loss!r}; valid: {valid}")
    eps = spec.eps if eps is None else eps
    if step_size is None:
        step_size = spec.step_for(eps)
    return definition.runner(
        spec, logits_fn, x, y, key, eps=eps, step_size=step_size, bounds=bounds
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


def worst_of_restarts(one: Callable, logits_fn: LogitsFn, x, y, key, restarts: int):
    """Runs ``one(key_r)`` per restart and keeps, per sample, the first that fools the model."""
    best = one(jax.random.fold_in(key, 0))
    robust = predictions_correct(logits_fn(best), y)
    for r in range(1, restarts):
        best, robust = take_where_broken(
            logits_fn, best, robust, one(jax.random.fold_in(key, r)), y
        )
    return best


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


def _run_square(spec, logits_fn, x, y, key, *, eps, step_size, bounds):
    """Square Attack (Andriushchenko et al. 2020) with ``spec.num_steps`` queries."""
    del step_size
    return square(
        logits_fn,
        x,
        y,
        key,
        eps=eps,
        num_queries=spec.num_steps,
        norm=spec.norm,
        restarts=spec.restarts,
        bounds=bounds,
    )


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
    "apgd-ce",
    AttackDef(
        _run_apgd, ("ce",), doc="Auto-PGD on the cross-entropy (Croce & Hein 2020)", eot=True
    ),
)
register_attack(
    "apgd-dlr",
    AttackDef(_run_apgd, ("dlr",), doc="Auto-PGD on the DLR loss (Croce & Hein 2020)", eot=True),
)
register_attack(
    "apgd-t",
    AttackDef(
        _run_apgd,
        ("dlr-t", "margin-t"),
        doc="targeted Auto-PGD over the 9 highest other classes, worst kept",
        eot=True,
    ),
)
register_attack(
    "square",
    AttackDef(
        _run_square,
        ("margin",),
        gradient_free=True,
        doc="Square Attack, score-based random search; steps = queries",
    ),
)
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
