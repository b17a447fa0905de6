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

import jax
import jax.numpy as jnp
import ml_collections

from arjax.config_lib import check_range
from arjax.losses.classification import head_kind
from arjax.methods.context import (
    MethodContext,
    accuracy,
    attack_defaults,
    mean,
    validate_attack,
)
from arjax.types import Array


def two_class_logits(logits: Array, labels: Array) -> tuple[Array, Array]:
    """Softmax logits ``[B, K]`` and integer labels ``[B]`` for a softmax or binary head.

    A single logit ``z`` (``[B]`` or ``[B, 1]``) becomes ``[0, z]``.

    Raises:
      ValueError: for a multi-label head.
    """
    kind = head_kind(logits, labels)
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


def loss(ctx: MethodContext, params, batch_stats, batch, key):
    """MART loss ``mean_b[BCE(x'_b) + lam * KL(p(x_b) || p(x'_b)) (1 - p_y(x_b))]``.

    Returns:
      ``(loss [], (metrics, new_batch_stats))``.
    """
    x, y = batch["image"], batch["label"]
    logits, _, stats = ctx.model.apply(params, batch_stats, x, train=True)
    x_adv = ctx.attack(params, batch_stats, x, y, key)
    logits_adv, _, stats = ctx.model.apply(params, stats, x_adv, train=True)
    bce, kl, weight = mart_terms(logits, logits_adv, y)
    adv = mean(bce)
    robust = mean(kl * weight)
    value = adv + ctx.cfg.lam * robust
    metrics = {
        "loss": value,
        "loss_adv": adv,
        "loss_kl": robust,
        "accuracy": accuracy(logits, y),
        "accuracy_adv": accuracy(logits_adv, y),
    }
    return value, (metrics, stats)


def defaults() -> dict:
    """Default ``method`` fields of ``mart`` (lam = 6, PGD-10 on the CE, linf)."""
    return dict(name="mart", lam=6.0, **{**attack_defaults(), "num_steps": 10})


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``method.*`` fields of ``mart``."""
    check_range(cfg, "method.lam", 0.0)
    validate_attack(cfg)
