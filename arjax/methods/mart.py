"""MART (Wang et al., ICLR 2020): boosted CE at x' plus a KL weighted to misclassified x.

"Improving adversarial robustness requires revisiting misclassified examples".

With ``p = softmax(f(.))`` and ``x'`` from PGD on the cross-entropy (the configured
attack, ``method.attack``), the loss (Eq. 10 of the paper) is

    L = mean_b [ BCE(p(x'_b), y_b) + lam * KL(p(x_b) || p(x'_b)) * (1 - p_y(x_b)) ]

    BCE(p, y) = -log p_y - log(1 - max_{k != y} p_k)

Gradients flow through every term, including ``p(x)`` in the KL and the weight
``1 - p_y(x)``, as in the authors' code. ``log(1 - p_k)`` is taken as the log-sum-exp of
the other logits minus that of all of them, which needs no stabilising constant.
``lam = 6`` is the paper's value (its code calls it ``beta``).

A single binary logit ``z`` is treated as the equivalent two-class softmax over the logits
``[0, z]`` (so ``p_1 = sigmoid(z)``): then ``max_{k != y} p_k = 1 - p_y`` and
``BCE = -2 log p_y(x')``, and the KL is the Bernoulli KL. Multi-label heads are not
supported.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from arjax.lazy import lazy_module
from arjax.methods.base import AttackMethod, LossOutput, check_range, register_method

if TYPE_CHECKING:
    from arjax.attacks import AttackSpec
    from arjax.types import Array

common = lazy_module("arjax.methods.common")
jax = lazy_module("jax")
jnp = lazy_module("jax.numpy")
classification = lazy_module("arjax.losses.classification")


def two_class_logits(logits: Array, labels: Array) -> tuple[Array, Array]:
    """Softmax logits ``[B, K]`` and integer labels ``[B]`` for a softmax or binary head.

    A single logit ``z`` (``[B]`` or ``[B, 1]``) becomes ``[0, z]``.

    Raises:
      ValueError: for a multi-label head.
    """
    kind = classification.head_kind(logits, labels)
    if kind == "softmax":
        return logits, labels
    if kind == "binary":
        z = logits.reshape(logits.shape[0])
        two = jnp.stack([jnp.zeros_like(z), z], axis=-1)
        return two, jnp.reshape(labels, z.shape).astype(jnp.int32)
    raise ValueError("mart supports softmax and single-logit binary heads, not multi-label.")


def boosted_ce(logits: Array, labels: Array) -> Array:
    """``-log p_y - log(1 - max_{k != y} p_k)`` per example ``[B]`` (softmax logits)."""
    log_p = jax.nn.log_softmax(logits)
    is_label = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.bool_)
    ce = -jnp.sum(jnp.where(is_label, log_p, 0.0), axis=-1)
    # The most likely wrong class k* (no gradient flows through the choice).
    k_star = jnp.argmax(jnp.where(is_label, -jnp.inf, logits), axis=-1)
    is_k = jax.nn.one_hot(k_star, logits.shape[-1], dtype=jnp.bool_)
    # log(1 - p_k*) = logsumexp_{j != k*} z_j - logsumexp_j z_j.
    log_rest = jax.nn.logsumexp(jnp.where(is_k, -jnp.inf, logits), axis=-1)
    log_not_k = log_rest - jax.nn.logsumexp(logits, axis=-1)
    return ce - log_not_k


def categorical_kl(clean_logits: Array, logits: Array) -> Array:
    """``KL(softmax(clean) || softmax(logits))`` per example ``[B]``."""
    log_q = jax.nn.log_softmax(clean_logits)
    return jnp.sum(jnp.exp(log_q) * (log_q - jax.nn.log_softmax(logits)), axis=-1)


def mart_terms(clean_logits, adv_logits, labels) -> tuple[Array, Array, Array]:
    """Per-example ``(BCE(x'), KL(p(x) || p(x')), 1 - p_y(x))``, each ``[B]``."""
    clean, y = two_class_logits(clean_logits, labels)
    adv, _ = two_class_logits(adv_logits, labels)
    p_y = jnp.take_along_axis(jax.nn.softmax(clean), y[:, None], axis=-1)[:, 0]
    return boosted_ce(adv, y), categorical_kl(clean, adv), 1.0 - p_y


@register_method("mart")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MART(AttackMethod):
    """MART loss ``mean_b[BCE(x'_b) + lam * KL(p(x_b) || p(x'_b)) (1 - p_y(x_b))]``.

    Attributes:
      lam: weight of the misclassification-weighted KL (the code's ``beta``; paper 6).
      attack: PGD on the cross-entropy (default PGD-10).
    """

    lam: float = 6.0
    attack: AttackSpec = "pgd:linf:0.1:10"

    def validate(self) -> None:
        """Checks ``lam``."""
        super().validate()
        check_range(self, "lam", 0.0)

    def loss(self, ctx, params, batch_stats, batch, state, key):
        """The MART loss; metrics hold both terms and both accuracies."""
        del state
        x, y = batch["image"], batch["label"]
        logits, _, stats = ctx.model.apply(params, batch_stats, x, train=True)
        x_adv = self.adversarial(ctx, params, batch_stats, x, y, key)
        logits_adv, _, stats = ctx.model.apply(params, stats, x_adv, train=True)
        bce, kl, weight = mart_terms(logits, logits_adv, y)
        adv = common.mean(bce)
        robust = common.mean(kl * weight)
        value = adv + self.lam * robust
        metrics = {
            "loss": value,
            "loss_adv": adv,
            "loss_kl": robust,
            "accuracy": common.accuracy(logits, y),
            "accuracy_adv": common.accuracy(logits_adv, y),
        }
        return value, LossOutput(metrics, stats)
