"""Pure attacks on a ``logits_fn`` closure, and the one attack registry (DESIGN §4).

The public names below are the contract (README "The API in a notebook", "Attacks: one
registry", DESIGN §8); the building blocks (PGD's ascent step, APGD's checkpoints, the
targeted objectives, the ensemble's members, ...) are importable from their modules.
Every attack module registers its attack at its bottom; importing this package imports
them all, so :data:`ATTACKS` is complete.
"""

from arjax.attacks.apgd import APGD_LOSSES, APGDResult, apgd
from arjax.attacks.bpgd import BPGD_LOSSES, BRACKETS, SIDES, BoundaryResult, bpgd
from arjax.attacks.ensemble import AUTOATTACK_VERSIONS, autoattack_adversarial
from arjax.attacks.eot import RandomizedModel
from arjax.attacks.fab import MinNormResult, fab
from arjax.attacks.fast import fgsm_rs, n_fgsm
from arjax.attacks.fmn import fmn
from arjax.attacks.geometry import LP_NORMS, NORMS, clip_to_bounds, lp_norm, project
from arjax.attacks.minimum_norm import minimum_norm
from arjax.attacks.noise import uniform_noise
from arjax.attacks.objectives import (
    LOSSES,
    attack_objective,
    dlr_objective,
    kl_objective,
    margin_objective,
)
from arjax.attacks.pgd import fgsm, pgd
from arjax.attacks.registry import (
    ATTACKS,
    DEFAULT_ALPHA,
    AttackDef,
    AttackSpec,
    SpecError,
    make_spec,
    parse_attack,
    register_attack,
    run_attack,
)
from arjax.attacks.segpgd import segpgd
from arjax.attacks.square import square

__all__ = [
    "APGD_LOSSES",
    "ATTACKS",
    "AUTOATTACK_VERSIONS",
    "APGDResult",
    "AttackDef",
    "AttackSpec",
    "BPGD_LOSSES",
    "BRACKETS",
    "BoundaryResult",
    "DEFAULT_ALPHA",
    "LOSSES",
    "LP_NORMS",
    "MinNormResult",
    "NORMS",
    "RandomizedModel",
    "SIDES",
    "SpecError",
    "apgd",
    "attack_objective",
    "autoattack_adversarial",
    "bpgd",
    "clip_to_bounds",
    "dlr_objective",
    "fab",
    "fgsm",
    "fgsm_rs",
    "fmn",
    "kl_objective",
    "lp_norm",
    "make_spec",
    "margin_objective",
    "minimum_norm",
    "n_fgsm",
    "parse_attack",
    "pgd",
    "project",
    "register_attack",
    "run_attack",
    "segpgd",
    "square",
    "uniform_noise",
]
