"""One attack registry: an :class:`AttackSpec` parsed once, one :func:`run_attack`.

Training methods (``method.attack``), the final evaluation (``eval.attacks``), the
``arjax-evaluate --attack`` flag and the benchmarks all name an attack the same way,
``"name:norm:eps[:steps][:key=value...]"`` (:mod:`arjax.attack_syntax`; e.g.
``"pgd:l2:0.5:100"``, ``"fgsm:linf:8/255"``, ``"pgd:linf:0.03:10:alpha=2.5"``,
``"square:linf:0.03:5000"``, ``"autoattack:linf:8/255"``), and all run it through
:func:`run_attack`. Adding an attack is one module in ``arjax/attacks/`` whose runner is
registered by a :func:`register_attack` call at the bottom of that module, one import in
``arjax/attacks/__init__.py``, and its tests.

The step-size rule is stated here once: a step of ``alpha * eps / steps`` with
``alpha = DEFAULT_ALPHA = 4`` (the IMA paper's convention, which every arjax caller has
used; Madry et al.'s 2.5 is ``alpha=2.5``), unless the spec fixes ``step_size``.
"""

import dataclasses
from collections.abc import Mapping
from fractions import Fraction
from typing import Any, Protocol

import numpy as np

from arjax import attack_syntax
from arjax.attack_syntax import FORMAT
from arjax.attacks.geometry import NORMS
from arjax.config_lib import ConfigError
from arjax.registry import Registry, closest
from arjax.types import Array, LogitsFn, PRNGKey, Radius

_REQUIRED = ("attack", "norm", "eps", "num_steps")
# The one step-size default of arjax: ``DEFAULT_ALPHA * eps / num_steps`` (IMA's alpha = 4,
# used by every method and evaluation; Madry et al.'s 2.5 is ``alpha=2.5``).
DEFAULT_ALPHA = 4.0


class SpecError(ConfigError):
    """An attack spec names an unknown attack/norm/loss or an out-of-range number.

    A :class:`~arjax.config_lib.ConfigError`: callers that read specs from a config name
    the field in ``where``.
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
      noise_scale: radius of the random start as a multiple of ``eps``, for the attacks
        that declare it (N-FGSM's k; de Jorge et al. 2022).
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
    noise_scale: float = 1.0
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

    @property
    def text(self) -> str:
        """The spec in the grammar of :mod:`arjax.attack_syntax` (reads back to ``self``)."""
        definition = ATTACKS[self.attack]
        steps = None if definition.fixed_steps else self.num_steps
        defaults = {"loss": definition.losses[0], **definition.defaults}
        options = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in _REQUIRED and getattr(self, f.name) != defaults.get(f.name, f.default)
        }
        return attack_syntax.format_spec(self.attack, self.norm, self.eps, steps, **options)

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
      defaults: the attack's own defaults of optional spec fields (fgsm_rs: alpha 1.25).
      norms: the norms the attack takes (``"l1"`` only the minimum-norm attacks).
      eot: whether ``AttackSpec.eot`` (averaged draws of a randomised model) applies.
    """

    runner: AttackRunner
    losses: tuple[str, ...]
    fixed_steps: int | None = None
    gradient_free: bool = False
    score_calibrated: bool = True
    doc: str = ""
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    norms: tuple[str, ...] = NORMS
    eot: bool = False


# Attack name -> definition; each attack module registers its own at its bottom.
ATTACKS: Registry[AttackDef] = Registry("attack", "attack")


def register_attack(name: str, definition: AttackDef) -> AttackDef:
    """Adds ``name`` to the registry (a ValueError if it is taken)."""
    return ATTACKS.register(name, definition)


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
    norms = list(ATTACKS[attack].norms) if attack in ATTACKS else list(NORMS)
    for kind, value, valid in (("attack", attack, sorted(ATTACKS)), ("norm", norm, norms)):
        if value not in valid:
            near = closest(value, valid)
            hint = f"; did you mean {near!r}?" if near else ""
            of = f" ({attack})" if kind == "norm" else ""
            raise SpecError(
                f"unknown {kind} {value!r} in {where}; valid choices: {', '.join(valid)}{of}{hint}"
            )
    eps = parse_eps(eps, where)
    definition = ATTACKS[attack]
    try:
        steps = int(num_steps)
    except (TypeError, ValueError):
        raise SpecError(f"steps {num_steps!r} in {where} is not an integer; {FORMAT}") from None
    if definition.fixed_steps is not None:
        steps = definition.fixed_steps
    if steps < 1:
        raise SpecError(f"steps={steps} in {where} is out of range; valid: [1, inf)")
    # an attack's first loss is its default (pgd: "ce", apgd-dlr: "dlr")
    options = {"loss": definition.losses[0], **definition.defaults, **options}
    spec = AttackSpec(attack, norm, eps, steps, **options)
    if spec.noise_scale != 1.0 and "noise_scale" not in definition.defaults:
        users = sorted(n for n, d in ATTACKS.items() if "noise_scale" in d.defaults)
        raise SpecError(f"attack {attack!r} in {where} has no noise_scale; valid for: {users}")
    if not spec.noise_scale >= 0:
        raise SpecError(f"noise_scale={spec.noise_scale} in {where} is out of range; [0, inf)")
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
    """One spec: ``"attack:norm:eps[:steps][:key=value...]"`` or a mapping with those keys.

    Args:
      spec: e.g. ``"pgd:l2:0.5:50"``, ``"fgsm:linf:8/255"``, ``"pgd:linf:0.1:7:alpha=2.5"``
        or ``{"attack": "fgsm", "norm": "linf", "eps": 0.01}`` (the ``key=value`` parts
        and a mapping may also set ``loss``, ``alpha``, ``step_size``, ``restarts``,
        ``random_start``).
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
    try:
        attack, norm, eps, steps, extra = attack_syntax.split_spec(spec)
    except attack_syntax.SyntaxFormatError:
        raise SpecError(f"{where}={spec!r} is not {FORMAT}") from None
    known = {f.name for f in dataclasses.fields(AttackSpec)} - set(_REQUIRED)
    unknown = sorted(set(extra) - known)
    if unknown:
        raise SpecError(f"{where}={spec!r} has unknown options {unknown}; valid: {sorted(known)}")
    steps = default_steps if steps is None else steps
    return make_spec(attack, norm, eps, steps, where=where, **{**options, **extra})


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
