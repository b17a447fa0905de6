"""DSBN: adversarial training with separate batch norms for clean and adversarial data.

Domain-specific batch normalisation (Chang et al., CVPR 2019) treats clean and
adversarial images as two domains, as the ARFL paper's baseline does (Hao et al.,
§4.2, after Han et al. 2021 "dual batch normalization"; the same construction is
AdvProp's auxiliary BN, Xie et al. 2020). Every batch norm of the model is a
:class:`arjax.models.DualBatchNorm`: the branch ``"clean"`` and the branch
``"adversarial"`` each have their own running statistics *and* their own affine
scale and bias (DSBN's "domain-specific affine parameters"); every other weight is
shared. With ``f_c`` / ``f_a`` the network through the clean / adversarial branch:

    L = r * mean_b L_cls(f_c(x_b), y_b) + (1 - r) * mean_b L_cls(f_a(x'_b), y_b)

    x' = PGD(f_{attack_branch}, x, y)   (ARFL: "We replaced FGSM with PGD")

``r = 0.5`` (the default) is the 1:1 clean/adversarial mix the ARFL paper compares
all methods at, and AdvProp's Eq. 3 up to a factor 2. The attack runs through the
adversarial branch by default (AdvProp's Algorithm 1, "using auxiliary BNs"),
in eval mode unless ``attack_train_mode``; ``attack_branch="clean"`` attacks through
the clean branch instead. The clean forward updates only the clean statistics and
the adversarial forward only the adversarial ones.

At test time the model normalises with the clean branch: the model's default
branch, so evaluation, test-time attacks and saliency need no DSBN-specific code.
The model must be built with ``model.dual_batch_norm=True`` (and so have batch
norms: ResNet-18 with ``norm="batch"``, VGG16 or the MLP with ``batch_norm=True``).
"""

import dataclasses

import ml_collections

from arjax.config_lib import ConfigError, check_choice, check_range
from arjax.methods.context import (
    MethodContext,
    accuracy,
    attack_defaults,
    mean,
    validate_attack,
    validate_common,
)
from arjax.models.dual_norm import BRANCHES, CLEAN, branch_model

ADVERSARIAL = BRANCHES[1]


def loss(ctx: MethodContext, params, batch_stats, batch, key):
    """DSBN loss ``r L_cls(f_c(x)) + (1 - r) L_cls(f_a(x'))`` (module docstring).

    Returns:
      ``(loss [], (metrics, new_batch_stats))``; the new statistics hold both
      branches, each updated by its own forward.
    """
    x, y = batch["image"], batch["label"]
    cfg = ctx.cfg
    r = cfg.r
    clean_model = branch_model(ctx.model, params, batch_stats, CLEAN)
    logits, _, stats = clean_model.apply(params, batch_stats, x, train=True)
    value = mean(ctx.cls_loss(logits, y))
    metrics = {"accuracy": accuracy(logits, y), "loss_clean": value}
    if r >= 1.0:  # static: the adversarial branch is not used
        return value, ({**metrics, "loss": value}, stats)
    adv_model = branch_model(ctx.model, params, batch_stats, ADVERSARIAL)
    attacker = adv_model if cfg.attack_branch == ADVERSARIAL else clean_model
    x_adv = dataclasses.replace(ctx, model=attacker).attack(params, batch_stats, x, y, key)
    logits_adv, _, stats = adv_model.apply(params, stats, x_adv, train=True)
    adv = mean(ctx.cls_loss(logits_adv, y))
    value = r * value + (1.0 - r) * adv
    metrics.update(loss=value, loss_adv=adv, accuracy_adv=accuracy(logits_adv, y))
    return value, (metrics, stats)


def defaults() -> dict:
    """Default ``method`` fields of ``dsbn`` (r = 0.5, PGD-20 through the adversarial BN)."""
    return dict(name="dsbn", cls_loss="ce", r=0.5, attack_branch=ADVERSARIAL, **attack_defaults())


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``method.*`` fields of ``dsbn`` and that the model has dual batch norms."""
    validate_common(cfg)
    check_range(cfg, "method.r", 0.0, 1.0, lo_open=True)
    check_choice(cfg, "method.attack_branch", BRANCHES)
    validate_attack(cfg)
    if not cfg.get("model", {}).get("dual_batch_norm", False):
        raise ConfigError(
            "method dsbn needs model.dual_batch_norm=True (a model with batch norms: "
            "resnet18 with norm='batch', or vgg16 / mlp with batch_norm=True)"
        )
