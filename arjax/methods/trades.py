"""TRADES (Zhang et al. 2019, arXiv 1901.08573): accuracy plus a KL smoothness term.

The outer loss (Eq. 5 of the paper, with the KL surrogate of its Sec. 4):

    L = mean_b [ L_cls(f(x_b), y_b) + beta * KL(P(x_b) || P(x'_b)) ]

    x'_b = argmax_{||x' - x_b|| <= eps} KL(P(x_b) || P(x'))

``x'`` is found by PGD on the KL objective (``loss="kl"`` of
:func:`arjax.attacks.pgd`) from a uniform random start (the KL gradient vanishes at
``x``), with the clean logits and the parameters' gradients stopped inside the attack;
the outer KL is differentiated through both ``P(x)`` and ``P(x')``, as in the authors'
code. ``P`` is the softmax for a ``[B, K]`` head, and the Bernoulli ``sigmoid(z)`` for a
single binary logit (multi-label heads: the per-class Bernoulli KLs summed).

``beta = 6`` is the paper's CIFAR-10 value. IMA (Ma et al.) writes the same weight as
``1/beta``: ``inv_beta > 0`` sets ``beta = 1 / inv_beta``; setting both is an error.
The attack is ``method.attack`` with the KL objective (``"pgd:linf:0.1:10:loss=kl"``: any
radius, norm, steps and step rule; PGD on the KL from a random start is fixed).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from arjax.lazy import lazy_module
from arjax.methods.base import AttackMethod, LossOutput, check_range, field_error, register_method

if TYPE_CHECKING:
    from arjax.attacks import AttackSpec

common = lazy_module("arjax.methods.common")
objectives = lazy_module("arjax.attacks.objectives")

DEFAULT_BETA = 6.0


@register_method("trades")
@dataclasses.dataclass(frozen=True, kw_only=True)
class TRADES(AttackMethod):
    """TRADES loss ``mean_b[L_cls(x_b) + beta * KL(P(x_b) || P(x'_b))]``.

    Attributes:
      beta: weight of the KL term (the TRADES paper's 1/lambda).
      inv_beta: IMA's notation: > 0 sets ``beta = 1 / inv_beta``.
      attack: PGD on the KL from a random start (``loss=kl``).
    """

    beta: float = DEFAULT_BETA
    inv_beta: float = 0.0
    attack: AttackSpec = "pgd:linf:0.1:10:loss=kl"

    def validate(self) -> None:
        """Checks ``beta``/``inv_beta`` and that the attack is PGD on the KL."""
        super().validate()
        check_range(self, "beta", 0.0)
        check_range(self, "inv_beta", 0.0)
        if self.inv_beta != 0.0 and self.beta != DEFAULT_BETA:
            raise field_error(
                self, "inv_beta",
                f"method.beta={self.beta!r} is set too; give one (inv_beta > 0 means "
                "beta = 1/inv_beta)",
            )  # fmt: skip
        spec = self.attack
        if spec.attack != "pgd" or spec.loss != "kl" or not spec.random_start:
            raise field_error(
                self, "attack", "TRADES maximises the KL by PGD from a random start: use "
                "pgd:<norm>:<eps>:<steps>:loss=kl",
            )  # fmt: skip

    @property
    def effective_beta(self) -> float:
        """``beta``, or ``1 / inv_beta`` when ``inv_beta > 0`` (IMA's notation)."""
        return 1.0 / self.inv_beta if self.inv_beta > 0 else self.beta

    def loss(self, ctx, params, batch_stats, batch, state, key):
        """The TRADES loss; metrics hold the two terms and both accuracies.

        ``x'`` maximises ``KL(P(x) || P(x'))`` by PGD; the clean logits the KL is taken
        from are computed by the attack's own model (eval mode unless
        ``attack_train_mode``).
        """
        del state
        x, y = batch["image"], batch["label"]
        logits, _, stats = ctx.model.apply(params, batch_stats, x, train=True)
        x_adv = self.adversarial(ctx, params, batch_stats, x, y, key)
        logits_adv, _, stats = ctx.model.apply(params, stats, x_adv, train=True)
        natural = common.mean(common.cls_loss(self.cls_loss, logits, y))
        robust = common.mean(objectives.kl_objective(logits_adv, y, logits))
        value = natural + self.effective_beta * robust
        metrics = {
            "loss": value,
            "loss_clean": natural,
            "loss_kl": robust,
            "accuracy": common.accuracy(logits, y),
            "accuracy_adv": common.accuracy(logits_adv, y),
        }
        return value, LossOutput(metrics, stats)
