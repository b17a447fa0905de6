"""Adversarial training with a clean/adversarial mix, and uniform-noise training.

``adversarial`` implements, with ``x'`` the batch in which a random fraction
``p`` (``perturb_fraction``) of the examples is replaced by adversarial ones:

    L = r * mean_i L_cls(x_i) + (1 - r) * mean_i L_cls(x'_i)

* ARFL Eq. 4 (Hao et al.): ``p = 1``; ``r = 1`` standard, ``r = 0`` Madry
  adversarial training, ``r = 0.5`` dual adversarial training.
* Khakzar et al. §3.2: FGSM on half of each batch: ``r = 0, p = 0.5``.
* IMA's ``adv eps`` baseline: ``(CE(x) + CE(x_adv)) / 2`` with 20-step PGD,
  alpha = 4: ``r = 0.5, p = 1``.

Only the ``round(p * B)`` chosen examples are attacked (a static-size gather,
then a scatter back), so ``p = 0.5`` costs half the attack passes.

``noise`` is the ``rand eps`` baseline of the IMA paper: train on
``clip(x + U(-eps, eps))``.
"""

from __future__ import annotations

import dataclasses

from arjax.lazy import lazy_module
from arjax.methods.base import (
    AttackMethod,
    LossOutput,
    Method,
    check_range,
    register_method,
)

common = lazy_module("arjax.methods.common")
jax = lazy_module("jax")
jnp = lazy_module("jax.numpy")


@register_method("adversarial")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Adversarial(AttackMethod):
    """Mixed clean/adversarial loss (ARFL Eq. 4; module docstring).

    Attributes:
      r: weight of the clean term, in [0, 1] (1: no attack at all).
      perturb_fraction: fraction of each batch that is attacked, in (0, 1].
      attack: the training attack (default IMA's ``adv eps``: PGD-20, alpha 4).
    """

    r: float = 0.5
    perturb_fraction: float = 1.0

    def validate(self) -> None:
        """Checks ``r`` and ``perturb_fraction``."""
        super().validate()
        check_range(self, "r", 0.0, 1.0)
        check_range(self, "perturb_fraction", 0.0, 1.0, lo_open=True)

    def adversarial_batch(self, ctx, params, batch_stats, x, y, key):
        """``x'``: the batch with a random ``perturb_fraction`` of it attacked."""
        return common.mixed_adversarial_batch(
            ctx, self.attack, self.attack_train_mode, self.perturb_fraction,
            params, batch_stats, x, y, key,
        )  # fmt: skip

    def loss(self, ctx, params, batch_stats, batch, state, key):
        """``r L_cls(x) + (1 - r) L_cls(x')``; metrics: clean and adversarial accuracies."""
        del state
        x, y = batch["image"], batch["label"]
        logits, _, stats = ctx.model.apply(params, batch_stats, x, train=True)
        clean = common.mean(common.cls_loss(self.cls_loss, logits, y))
        metrics = {"accuracy": common.accuracy(logits, y), "loss_clean": clean}
        if self.r >= 1.0:  # static: no attack at all
            return clean, LossOutput({**metrics, "loss": clean}, stats)
        x_adv = self.adversarial_batch(ctx, params, batch_stats, x, y, key)
        logits_adv, _, stats = ctx.model.apply(params, stats, x_adv, train=True)
        adv = common.mean(common.cls_loss(self.cls_loss, logits_adv, y))
        r = self.r
        value = r * clean + (1.0 - r) * adv if r > 0 else adv
        metrics.update(loss=value, loss_adv=adv, accuracy_adv=common.accuracy(logits_adv, y))
        return value, LossOutput(metrics, stats)


@register_method("noise")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Noise(Method):
    """``rand eps``: mean loss on ``clip(x + U(-eps, eps))`` (IMA paper baseline).

    Attributes:
      eps: the noise half-width, > 0.
    """

    eps: float = 0.1

    def validate(self) -> None:
        """Checks ``eps``."""
        super().validate()
        check_range(self, "eps", 0.0, lo_open=True)

    def loss(self, ctx, params, batch_stats, batch, state, key):
        """The mean classification loss on the noisy batch."""
        del state
        x, y = batch["image"], batch["label"]
        noisy = x + jax.random.uniform(key, x.shape, x.dtype, -self.eps, self.eps)
        if ctx.bounds is not None:
            noisy = jnp.clip(noisy, *ctx.bounds)
        logits, _, stats = ctx.model.apply(params, batch_stats, noisy, train=True)
        value = common.mean(common.cls_loss(self.cls_loss, logits, y))
        return value, LossOutput({"loss": value, "accuracy": common.accuracy(logits, y)}, stats)
