"""The attacks an evaluation runs, as validated specs ``"attack:norm:eps[:steps]"``.

ARFL (Hao et al., §4.2) reports metrics on "adversarial data" made by one
attack (FGSM eps_2 = 0.2 on two-moons, PGD on mammograms); a medical
evaluation usually wants several budgets and both norms. ``eval.attacks`` lists
them, e.g. ``("fgsm:linf:0.01", "pgd:linf:0.01:100", "pgd:l2:0.5")``; when it
is empty the single legacy attack ``eval.adv_attack`` / ``eval.norm`` /
``eval.adv_eps`` / ``eval.num_steps`` is used. The first attack is the one the
``adversarial`` section of a report (and "mean metric" in comparisons) refers to.
"""

import itertools
from collections.abc import Sequence
from typing import Any

import ml_collections

from arjax.attacks.registry import DEFAULT_ALPHA, FORMAT, AttackSpec, SpecError
from arjax.attacks.registry import parse_attack as _parse
from arjax.config_lib import ConfigError

__all__ = [
    "AUTOATTACK_FAMILY", "FORMAT", "AttackSpec", "attack_specs", "cross_product", "parse_attack",
]  # fmt: skip

# The attacks a reviewer-grade robustness claim is made with (Croce & Hein 2020): their
# rows get the gradient-masking checks and drive the robust curves when
# eval.masking_checks / eval.curve_attack are "auto".
AUTOATTACK_FAMILY = ("apgd-ce", "apgd-dlr", "apgd-t", "autoattack", "autoattack-fast")


def parse_attack(
    spec: Any, *, default_steps: int, field: str = "eval.attacks", **options: Any
) -> AttackSpec:
    """:func:`arjax.attacks.parse_attack`, raising ConfigError naming the config ``field``."""
    try:
        return _parse(spec, default_steps=default_steps, where=field, **options)
    except SpecError as e:
        raise ConfigError(str(e)) from None


def attack_specs(eval_cfg: ml_collections.ConfigDict) -> list[AttackSpec]:
    """The attacks of an ``eval`` config section: ``eval.attacks``, else the legacy one.

    Raises:
      ConfigError: for a malformed or duplicated spec.
    """
    steps = eval_cfg.get("num_steps", 20)
    # eval.alpha: the step factor of every attack (the rule is the registry's).
    options = {"alpha": float(eval_cfg.get("alpha", DEFAULT_ALPHA))}
    listed = tuple(eval_cfg.get("attacks", ()) or ())
    if not listed:
        legacy = {"attack": eval_cfg.adv_attack, "norm": eval_cfg.norm, "eps": eval_cfg.adv_eps}
        return [
            parse_attack(
                legacy, default_steps=steps, field="eval.adv_attack/norm/adv_eps", **options
            )
        ]
    specs = [
        parse_attack(s, default_steps=steps, field=f"eval.attacks[{i}]", **options)
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
    return tuple(f"{a}:{n}:{e!r}:{steps}" for a, n, e in itertools.product(attacks, norms, eps))
