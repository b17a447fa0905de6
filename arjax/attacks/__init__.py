"""Pure attack functions on a ``logits_fn`` closure (DESIGN §4)."""

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
from arjax.attacks.pgd import fgsm, pgd

__all__ = [
    "LOSSES",
    "NORMS",
    "attack_objective",
    "check_loss_name",
    "check_norm_name",
    "clip_to_bounds",
    "fgsm",
    "kl_objective",
    "lp_norm",
    "margin_objective",
    "per_sample",
    "pgd",
    "project",
    "random_init",
    "step_direction",
]
