"""The attacks an evaluation runs, as validated specs ``"attack:norm:eps[:steps]"``.

ARFL (Hao et al., §4.2) reports metrics on "adversarial data" made by one
attack (FGSM eps_2 = 0.2 on two-moons, PGD on mammograms); a medical
evaluation usually wants several budgets and both norms. ``eval.attacks`` lists
them, e.g. ``("fgsm:linf:0.01", "pgd:linf:0.01:100", "pgd:l2:0.5")``; when it
is empty the single legacy attack ``eval.adv_attack`` / ``eval.norm`` /
``eval.adv_eps`` / ``eval.num_steps`` is used. The first attack is the one the
``adversarial`` section of a report (and "mean metric" in comparisons) refers to.
"""

import dataclasses
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from arjax.attacks import NORMS
from arjax.config_lib import ConfigError
from arjax.evaluation.robustness import ATTACKS

FORMAT = "attack:norm:eps[:steps], e.g. pgd:linf:0.01:20"


@dataclasses.dataclass(frozen=True)
class AttackSpec:
    """One evaluation attack.

    Attributes:
      attack: ``"fgsm"`` (one full step of size eps) or ``"pgd"`` (random start).
      norm: ``"linf"`` or ``"l2"``.
      eps: radius >= 0.
      num_steps: PGD steps (1 for FGSM).
    """

    attack: str
    norm: str
    eps: float
    num_steps: int

    @property
    def name(self) -> str:
        """Short key used in reports: ``fgsm_linf_0.01``, ``pgd20_l2_0.5``."""
        steps = str(self.num_steps) if self.attack == "pgd" else ""
        return f"{self.attack}{steps}_{self.norm}_{self.eps:g}"

    def to_dict(self) -> dict[str, Any]:
        """JSON fields, with the name."""
        return {"name": self.name, **dataclasses.asdict(self)}


def parse_attack(spec: Any, *, default_steps: int, field: str = "eval.attacks") -> AttackSpec:
    """One spec: a string ``"attack:norm:eps[:steps]"`` or a mapping with those keys.

    Args:
      spec: e.g. ``"pgd:l2:0.5:50"`` or ``{"attack": "fgsm", "norm": "linf", "eps": 0.01}``.
      default_steps: PGD steps when the spec gives none (``eval.num_steps``).
      field: config field named in errors.

    Raises:
      ConfigError: naming ``field``, the format and the valid choices.
    """
    if isinstance(spec, Mapping | ml_collections.ConfigDict):
        parts = [spec.get("attack"), spec.get("norm", "linf"), spec.get("eps")]
        parts.append(spec.get("num_steps", default_steps))
    elif isinstance(spec, str):
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise ConfigError(f"{field}={spec!r} is not {FORMAT}")
        parts += [default_steps] * (4 - len(parts))
    else:
        raise ConfigError(f"{field}={spec!r} must be a string {FORMAT}")
    attack, norm, eps, steps = parts
    if attack not in ATTACKS:
        valid = ", ".join(sorted(ATTACKS))
        raise ConfigError(f"unknown attack {attack!r} in {field}; valid choices: {valid}")
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r} in {field}; valid choices: {', '.join(NORMS)}")
    try:
        eps = float(eps)
    except (TypeError, ValueError):
        raise ConfigError(f"eps {eps!r} in {field} is not a number; format {FORMAT}") from None
    if not eps >= 0:
        raise ConfigError(f"eps={eps!r} in {field} is out of range; valid: [0, inf)")
    try:
        steps = int(steps)
    except (TypeError, ValueError):
        msg = f"steps {steps!r} in {field} is not an integer; format {FORMAT}"
        raise ConfigError(msg) from None
    if steps < 1:
        raise ConfigError(f"steps={steps} in {field} is out of range; valid: [1, inf)")
    return AttackSpec(attack, norm, eps, 1 if attack == "fgsm" else steps)


def attack_specs(eval_cfg: ml_collections.ConfigDict) -> list[AttackSpec]:
    """The attacks of an ``eval`` config section: ``eval.attacks``, else the legacy one.

    Raises:
      ConfigError: for a malformed or duplicated spec.
    """
    steps = eval_cfg.get("num_steps", 20)
    listed = tuple(eval_cfg.get("attacks", ()) or ())
    if not listed:
        legacy = {"attack": eval_cfg.adv_attack, "norm": eval_cfg.norm, "eps": eval_cfg.adv_eps}
        return [parse_attack(legacy, default_steps=steps, field="eval.adv_attack/norm/adv_eps")]
    specs = [
        parse_attack(s, default_steps=steps, field=f"eval.attacks[{i}]")
        for i, s in enumerate(listed)
    ]
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"eval.attacks lists {dup} more than once")
    return specs


def cross_product(
    attacks: Sequence[str], norms: Sequence[str], eps: Sequence[float], steps: int
) -> tuple[str, ...]:
    """Spec strings for every (attack, norm, eps) combination, as the CLI builds them."""
    return tuple(f"{a}:{n}:{e:g}:{steps}" for a, n, e in itertools.product(attacks, norms, eps))
