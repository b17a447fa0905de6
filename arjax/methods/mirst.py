"""MIRST: multi-instance robust self-training (Sun et al., MICCAI 2022), as ARFL describes it.

The ARFL paper (Hao et al., §4.2) summarises MIRST as: it "uses different levels of
perturbations to generate adversarial examples as additional data for
self-training". The MIRST-DM paper itself is not available offline; arjax
implements that sentence with the robust self-training (RST) loss of Raghunathan et
al. 2020 / Carmon et al. 2019 on the extra instances. The choices, all fields:

* **Instances.** For each level ``l_k`` of ``levels`` (fractions of ``eps``, default
  ``(1/3, 2/3, 1)``) one adversarial instance ``x'_k`` of every example, by the
  configured attack (PGD on the cross-entropy) at radius ``eps_k = l_k * eps`` with
  step ``alpha * eps_k / num_steps``. The ``K`` instances are attacked in one call on
  the ``[K * B]`` batch with per-sample radii.
* **Supervised term.** The instances are additional labelled data: the
  classification loss is averaged over the clean batch and the ``K`` instance
  batches, ``(1 / (K + 1)) * (mean_b L(x_b) + sum_k mean_b L(x'_{k,b}))``.
* **Self-training term.** RST's pseudo-labels are the model's own predictions: the
  soft label ``P(x_b)`` of the clean input, gradients stopped, is the target of every
  instance, ``beta * (1 / K) * sum_k mean_b KL(P(x_b) || P(x'_{k,b}))`` (TRADES' KL of
  RST's robust loss, with the teacher fixed as self-training does).

    L = 1/(K+1) [L(x) + sum_k L(x'_k)] + beta / K * sum_k KL(sg P(x) || P(x'_k))

``beta = 0`` with ``levels = (1,)`` is IMA's ``adv eps`` baseline
``(L(x) + L(x'))/2``. ``P`` is the softmax of a ``[B, K]`` head or the Bernoulli
``sigmoid`` of one binary logit. The drop-max layer of MIRST-DM is not implemented.
"""

from __future__ import annotations

import dataclasses

from arjax.lazy import lazy_module
from arjax.methods.base import AttackMethod, LossOutput, check_range, field_error, register_method

common = lazy_module("arjax.methods.common")
jax = lazy_module("jax")
jnp = lazy_module("jax.numpy")
objectives = lazy_module("arjax.attacks.objectives")

DEFAULT_LEVELS = (1.0 / 3.0, 2.0 / 3.0, 1.0)


@register_method("mirst")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MIRST(AttackMethod):
    """MIRST loss (module docstring's ``L``).

    Attributes:
      levels: the instances' radii as fractions of the attack's eps, each in (0, 1].
      beta: weight of the self-training KL.
      attack: the attack making the instances (default PGD-20 on the CE, alpha 4).
    """

    levels: tuple[float, ...] = DEFAULT_LEVELS
    beta: float = 1.0

    def validate(self) -> None:
        """Checks ``beta`` and ``levels`` (a non-empty tuple of fractions in (0, 1])."""
        super().validate()
        check_range(self, "beta", 0.0)
        levels = self.levels
        bad = (
            not isinstance(levels, tuple | list)
            or not levels
            or any(isinstance(v, bool) or not isinstance(v, int | float) for v in levels)
            or any(not 0.0 < v <= 1.0 for v in levels)
        )
        if bad:
            raise field_error(
                self, "levels", "needs a non-empty tuple of fractions of the attack's eps, "
                "each in (0, 1], e.g. (0.333, 0.667, 1.0)",
            )  # fmt: skip

    def instances(self, ctx, params, batch_stats, x, y, key):
        """The ``K`` adversarial instances of the batch, one per level.

        Returns:
          ``(x_inst [K * B, ...], y_inst [K * B, ...])``, level-major (rows ``k * B ..
          (k + 1) * B - 1`` are level ``k``); gradients stopped.
        """
        k = len(self.levels)
        xs = jnp.concatenate([x] * k)
        ys = jnp.concatenate([y] * k)
        radii = jnp.repeat(jnp.asarray(self.levels, x.dtype) * self.attack.eps, x.shape[0])
        return self.adversarial(ctx, params, batch_stats, xs, ys, key, eps=radii), ys

    def loss(self, ctx, params, batch_stats, batch, state, key):
        """The MIRST loss.

        Metrics hold the clean and instance terms, the self-training KL and the clean and
        largest-level accuracies.
        """
        del state
        x, y = batch["image"], batch["label"]
        k = len(self.levels)
        logits, _, stats = ctx.model.apply(params, batch_stats, x, train=True)
        x_inst, y_inst = self.instances(ctx, params, batch_stats, x, y, key)
        logits_inst, _, stats = ctx.model.apply(params, stats, x_inst, train=True)
        clean = common.mean(common.cls_loss(self.cls_loss, logits, y))
        per_level = jnp.mean(common.cls_loss(self.cls_loss, logits_inst, y_inst).reshape(k, -1), 1)
        supervised = (clean + jnp.sum(per_level)) / (k + 1)
        teacher = jax.lax.stop_gradient(jnp.concatenate([logits] * k))
        self_training = common.mean(objectives.kl_objective(logits_inst, y_inst, teacher))
        value = supervised + self.beta * self_training
        last = slice((k - 1) * x.shape[0], None)  # the largest level's instances
        metrics = {
            "loss": value,
            "loss_clean": clean,
            "loss_adv": jnp.mean(per_level),
            "loss_kl": self_training,
            "accuracy": common.accuracy(logits, y),
            "accuracy_adv": common.accuracy(logits_inst[last], y_inst[last]),
        }
        return value, LossOutput(metrics, stats)
