"""ARFL: adversarially robust feature learning (Hao et al., Eq. 2 and Eq. 5).

    L_overall(x) = L_cls(x) + lambda * L_robust(x)                       (Eq. 2)
    L = (1 - r) * (L_cls(x + d) + s * lambda * L_robust(x + d))
        + r * L_overall(x)                                               (Eq. 5)

with ``d`` from FGSM (two-moons, eps_1 = 0.05) or PGD-7 (mammography,
eps_1 = 0.01). The paper prints ``s = -1`` (a minus sign on the adversarial
``L_robust`` term), although its text asks for features "robust on both"
clean and adversarial data, which reads as ``s = +1``. ``adv_sign`` selects
it; the default follows the printed equation. ``L_robust`` is computed on the
model's feature output (the penultimate layer for MLPs, the last convolutional
map for CNNs; ``model.features_at`` of the MLP picks before or after its
activation), or on the logits with ``robust_on="logits"`` (a reading of the
paper's "features" tested for Table 1, docs/fidelity.md). ``r = 1`` is standard
training + ARFL (Eq. 2) and runs no attack.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from arjax.lazy import lazy_module
from arjax.methods.adversarial import Adversarial
from arjax.methods.base import LossOutput, check_choice, check_range, field_error, register_method

if TYPE_CHECKING:
    from arjax.attacks import AttackSpec

common = lazy_module("arjax.methods.common")
jnp = lazy_module("jax.numpy")
losses = lazy_module("arjax.losses")

# What L_robust (Eq. 1) is computed on: the model's feature output, or its logits.
ROBUST_ON = ("features", "logits")


def _pm1(labels):
    """Labels in {-1, +1} for ``L_robust``: binary labels map 0 -> -1; others -> +1.

    ``L_robust`` only sees ``|f * y|``, so for y in {-1, +1} the value is the
    same whatever this returns; it exists to keep the paper's formula.
    """
    if labels.ndim == 1:
        return losses.labels_to_pm1(jnp.clip(labels, 0, 1))
    return jnp.ones(labels.shape[:1], jnp.float32)


def _as_map(logits):
    """Logits as ``L_robust``'s input: ``[B]`` (one binary logit) -> ``[B, 1]``."""
    return logits[:, None] if logits.ndim == 1 else logits


@register_method("arfl")
@dataclasses.dataclass(frozen=True, kw_only=True)
class ARFL(Adversarial):
    """ARFL Eq. 5 (Eq. 2 when ``r = 1``); defaults are the two-moons setting.

    Attributes:
      r: weight of the clean ``L_overall`` term (1 standard, 0 Madry, 0.5 dual).
      lam: lambda, the weight of ``L_robust``.
      adv_sign: ``s``, the sign of the adversarial ``L_robust`` term (-1 as printed).
      robust_on: ``"features"`` (the model's feature output) or ``"logits"``.
      perturb_fraction: fraction of each batch that is attacked.
      attack: the training attack (two-moons: FGSM eps_1 = 0.05).
    """

    lam: float = 0.5
    adv_sign: float = -1.0
    robust_on: str = "features"
    attack: AttackSpec = "fgsm:linf:0.05"

    def validate(self) -> None:
        """Checks ``lam``, ``robust_on``, ``adv_sign`` and the mixing fields."""
        super().validate()
        check_range(self, "lam", 0.0)
        check_choice(self, "robust_on", ROBUST_ON)
        if self.adv_sign not in (-1, 1):
            raise field_error(self, "adv_sign", "valid choices: -1, 1")

    def loss(self, ctx, params, batch_stats, batch, state, key):
        """ARFL Eq. 5; metrics hold both terms of each part and the accuracies."""
        del state
        x, y = batch["image"], batch["label"]
        lam, r = self.lam, self.r
        y_pm1 = _pm1(y)
        logits, feats, stats = ctx.model.apply(params, batch_stats, x, train=True)
        if self.robust_on == "logits":
            feats = _as_map(logits)
        elif feats is None:
            raise ValueError(
                "method 'arfl' needs the model's features (L_robust, Hao et al. Eq. 1, is "
                "computed on the penultimate layer / last convolutional map), but the model "
                "returns plain logits: adapt it with arjax.models.adapt(model, "
                "features='penultimate') or return (logits, features) from it"
            )
        cls_clean = common.mean(common.cls_loss(self.cls_loss, logits, y))
        rob_clean = common.mean(losses.arfl_robust(feats, y_pm1))
        overall = cls_clean + lam * rob_clean
        metrics = {
            "accuracy": common.accuracy(logits, y),
            "loss_clean": cls_clean,
            "robust_clean": rob_clean,
        }
        if r >= 1.0:
            return overall, LossOutput({**metrics, "loss": overall}, stats)
        x_adv = self.adversarial_batch(ctx, params, batch_stats, x, y, key)
        logits_adv, feats_adv, stats = ctx.model.apply(params, stats, x_adv, train=True)
        if self.robust_on == "logits":
            feats_adv = _as_map(logits_adv)
        cls_adv = common.mean(common.cls_loss(self.cls_loss, logits_adv, y))
        rob_adv = common.mean(losses.arfl_robust(feats_adv, y_pm1))
        adv_term = cls_adv + self.adv_sign * lam * rob_adv
        value = (1.0 - r) * adv_term + r * overall if r > 0 else adv_term
        metrics.update(
            loss=value,
            loss_adv=cls_adv,
            robust_adv=rob_adv,
            accuracy_adv=common.accuracy(logits_adv, y),
        )
        return value, LossOutput(metrics, stats)
