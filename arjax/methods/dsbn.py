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

from __future__ import annotations

import dataclasses

from arjax.config_lib import ConfigError
from arjax.lazy import lazy_module
from arjax.methods.adversarial import Adversarial
from arjax.methods.base import Context, LossOutput, check_choice, check_range, register_method

common = lazy_module("arjax.methods.common")
dual_norm = lazy_module("arjax.models.dual_norm")

# The two branches of a dual batch norm (arjax.models.dual_norm.BRANCHES).
CLEAN, ADVERSARIAL = "clean", "adversarial"


@register_method("dsbn")
@dataclasses.dataclass(frozen=True, kw_only=True)
class DSBN(Adversarial):
    """DSBN loss ``r L_cls(f_c(x)) + (1 - r) L_cls(f_a(x'))`` (module docstring).

    Attributes:
      r: weight of the clean-branch term, in (0, 1].
      attack_branch: the branch the attack runs through (``"adversarial"``: AdvProp).
      attack: the training attack (default PGD-20, alpha 4).
    """

    attack_branch: str = ADVERSARIAL

    def validate(self) -> None:
        """Checks ``r`` (> 0) and ``attack_branch``."""
        super().validate()
        check_range(self, "r", 0.0, 1.0, lo_open=True)
        check_choice(self, "attack_branch", (CLEAN, ADVERSARIAL))

    def check_model(self, model, params, batch_stats) -> None:
        """The model must have dual batch norms (``model.dual_batch_norm=True``)."""
        try:
            dual_norm.branch_model(model, params, batch_stats, CLEAN)
        except ValueError:
            raise ConfigError(
                "method dsbn needs model.dual_batch_norm=True (a model with batch norms: "
                "resnet18 with norm='batch', or vgg16 / mlp with batch_norm=True)"
            ) from None

    def loss(self, ctx, params, batch_stats, batch, state, key):
        """The DSBN loss; the new statistics hold both branches, each from its own pass."""
        del state
        x, y = batch["image"], batch["label"]
        r = self.r
        clean_model = dual_norm.branch_model(ctx.model, params, batch_stats, CLEAN)
        logits, _, stats = clean_model.apply(params, batch_stats, x, train=True)
        value = common.mean(common.cls_loss(self.cls_loss, logits, y))
        metrics = {"accuracy": common.accuracy(logits, y), "loss_clean": value}
        if r >= 1.0:  # static: the adversarial branch is not used
            return value, LossOutput({**metrics, "loss": value}, stats)
        adv_model = dual_norm.branch_model(ctx.model, params, batch_stats, ADVERSARIAL)
        attacker = adv_model if self.attack_branch == ADVERSARIAL else clean_model
        x_adv = self.adversarial(Context(attacker, ctx.bounds), params, batch_stats, x, y, key)
        logits_adv, _, stats = adv_model.apply(params, stats, x_adv, train=True)
        adv = common.mean(common.cls_loss(self.cls_loss, logits_adv, y))
        value = r * value + (1.0 - r) * adv
        metrics.update(loss=value, loss_adv=adv, accuracy_adv=common.accuracy(logits_adv, y))
        return value, LossOutput(metrics, stats)
