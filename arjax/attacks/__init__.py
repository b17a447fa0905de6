"""Pure attack functions on a ``logits_fn`` closure (DESIGN §4)."""

from arjax.attacks.apgd import (
    APGD_LOSSES,
    APGDResult,
    apgd,
    apgd_checkpoints,
    apgd_result,
    top_k_targets,
)
from arjax.attacks.bpgd import BPGD_LOSSES, BRACKETS, SIDES, BoundaryResult, bpgd
from arjax.attacks.ensemble import (
    AUTOATTACK_VERSIONS,
    EnsembleMember,
    autoattack_adversarial,
    autoattack_members,
)
from arjax.attacks.eot import RandomizedModel
from arjax.attacks.fab import MinNormResult, fab
from arjax.attacks.fast import fgsm_rs, n_fgsm
from arjax.attacks.fmn import fmn
from arjax.attacks.geometry import (
    LP_NORMS,
    NORMS,
    check_norm_name,
    clip_to_bounds,
    dual_norm,
    lp_norm,
    per_sample,
    project,
    random_init,
    step_direction,
)
from arjax.attacks.minimum_norm import MIN_NORM_ATTACKS, minimum_norm
from arjax.attacks.noise import uniform_noise
from arjax.attacks.objectives import (
    LOSSES,
    attack_objective,
    check_loss_name,
    dlr_objective,
    kl_objective,
    margin_objective,
    targeted_dlr_objective,
    targeted_margin_objective,
    worst_label_margin,
)
from arjax.attacks.pgd import (
    ascent_step,
    check_attack_args,
    fgsm,
    objective_grad_fn,
    pgd,
    start_delta,
)
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
from arjax.attacks.segpgd import segpgd, segpgd_lambda, segpgd_objective
from arjax.attacks.selection import take_where_broken, worst_of_restarts
from arjax.attacks.square import square, square_p

__all__ = [
    "APGD_LOSSES",
    "APGDResult",
    "apgd",
    "apgd_checkpoints",
    "apgd_result",
    "top_k_targets",
    "AUTOATTACK_VERSIONS",
    "EnsembleMember",
    "autoattack_adversarial",
    "autoattack_members",
    "dlr_objective",
    "targeted_dlr_objective",
    "targeted_margin_objective",
    "worst_label_margin",
    "segpgd",
    "segpgd_lambda",
    "segpgd_objective",
    "square",
    "square_p",
    "uniform_noise",
    "LP_NORMS",
    "MIN_NORM_ATTACKS",
    "MinNormResult",
    "RandomizedModel",
    "dual_norm",
    "fab",
    "fmn",
    "minimum_norm",
    "ATTACKS",
    "AttackDef",
    "AttackSpec",
    "DEFAULT_ALPHA",
    "SpecError",
    "make_spec",
    "parse_attack",
    "register_attack",
    "run_attack",
    "take_where_broken",
    "worst_of_restarts",
    "BPGD_LOSSES",
    "BRACKETS",
    "BoundaryResult",
    "LOSSES",
    "NORMS",
    "SIDES",
    "ascent_step",
    "attack_objective",
    "bpgd",
    "check_attack_args",
    "check_loss_name",
    "check_norm_name",
    "clip_to_bounds",
    "fgsm",
    "fgsm_rs",
    "n_fgsm",
    "kl_objective",
    "lp_norm",
    "margin_objective",
    "objective_grad_fn",
    "per_sample",
    "pgd",
    "project",
    "random_init",
    "start_delta",
    "step_direction",
]
