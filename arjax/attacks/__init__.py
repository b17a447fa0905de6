"""Pure attack functions on a ``logits_fn`` closure (DESIGN §4)."""

from arjax.attacks.bpgd import BPGD_LOSSES, BRACKETS, SIDES, BoundaryResult, bpgd
from arjax.attacks.geometry import (
    NORMS,
    check_norm_name,
    clip_to_bounds,
    lp_norm,
    per_sample,
    project,
    random_init,
    step_direction,
)
from arjax.attacks.objectives import (
    LOSSES,
    attack_objective,
    check_loss_name,
    kl_objective,
    margin_objective,
)
from arjax.attacks.pgd import (
    ascent_step,
    check_attack_args,
    fgsm,
    objective_grad_fn,
    pgd,
    start_delta,
)

__all__ = [
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
