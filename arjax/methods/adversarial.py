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

import jax
import jax.numpy as jnp
import ml_collections

from arjax.config_lib import check_range
from arjax.methods.context import (
    MethodContext,
    accuracy,
    attack_defaults,
    mean,
    validate_attack,
    validate_common,
)


def perturbed_subset(key, batch_size: int, fraction: float) -> jax.Array:
    """Indices ``[round(fraction * B)]`` of a uniformly random subset of the batch."""
    count = int(round(fraction * batch_size))
    return jax.random.permutation(key, batch_size)[:count]


def mixed_adversarial_batch(ctx: MethodContext, params, batch_stats, x, y, key) -> jax.Array:
    """The batch ``x'`` with a random ``perturb_fraction`` of it attacked.

    Args:
      ctx: method context (attack fields in ``ctx.cfg``).
      params: model parameters.
      batch_stats: batch statistics.
      x: inputs ``[B, ...]``.
      y: labels ``[B]`` or ``[B, C]``.
      key: PRNG key.

    Returns:
      ``[B, ...]``: adversarial where chosen, clean elsewhere; gradients stopped.
    """
    fraction = ctx.cfg.get("perturb_fraction", 1.0)
    k_subset, k_attack = jax.random.split(key)
    if fraction >= 1.0:
        return ctx.attack(params, batch_stats, x, y, k_attack)
    idx = perturbed_subset(k_subset, x.shape[0], fraction)
    x_adv = ctx.attack(params, batch_stats, x[idx], y[idx], k_attack)
    return x.at[idx].set(x_adv)


def loss(ctx: MethodContext, params, batch_stats, batch, key):
    """Mixed clean/adversarial loss (ARFL Eq. 4; see module docstring).

    Returns:
      ``(loss [], (metrics, new_batch_stats))``; metrics hold the clean and
      adversarial batch accuracies.
    """
    x, y = batch["image"], batch["label"]
    r = ctx.cfg.r
    logits, _, stats = ctx.model.apply(params, batch_stats, x, train=True)
    clean = mean(ctx.cls_loss(logits, y))
    metrics = {"accuracy": accuracy(logits, y), "loss_clean": clean}
    if r >= 1.0:  # static: no attack at all
        return clean, ({**metrics, "loss": clean}, stats)
    x_adv = mixed_adversarial_batch(ctx, params, batch_stats, x, y, key)
    logits_adv, _, stats = ctx.model.apply(params, stats, x_adv, train=True)
    adv = mean(ctx.cls_loss(logits_adv, y))
    value = r * clean + (1.0 - r) * adv if r > 0 else adv
    metrics.update(loss=value, loss_adv=adv, accuracy_adv=accuracy(logits_adv, y))
    return value, (metrics, stats)


def noise_loss(ctx: MethodContext, params, batch_stats, batch, key):
    """``rand eps``: mean loss on ``clip(x + U(-eps, eps))`` (IMA paper baseline).

    Returns:
      ``(loss [], (metrics, new_batch_stats))``.
    """
    x, y = batch["image"], batch["label"]
    eps = ctx.cfg.eps
    noisy = x + jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
    if ctx.bounds is not None:
        noisy = jnp.clip(noisy, *ctx.bounds)
    logits, _, stats = ctx.model.apply(params, batch_stats, noisy, train=True)
    value = mean(ctx.cls_loss(logits, y))
    return value, ({"loss": value, "accuracy": accuracy(logits, y)}, stats)


def defaults() -> dict:
    """Default ``method`` fields of ``adversarial`` (IMA's ``adv eps``: PGD-20, r = 0.5)."""
    return dict(name="adversarial", cls_loss="ce", r=0.5, perturb_fraction=1.0, **attack_defaults())


def noise_defaults() -> dict:
    """Default ``method`` fields of ``noise``."""
    return dict(name="noise", cls_loss="ce", eps=0.1)


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``method.*`` fields of ``adversarial``."""
    validate_common(cfg)
    check_range(cfg, "method.r", 0.0, 1.0)
    check_range(cfg, "method.perturb_fraction", 0.0, 1.0, lo_open=True)
    if cfg.method.r < 1.0:
        validate_attack(cfg)


def validate_noise(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``method.*`` fields of ``noise``."""
    validate_common(cfg)
    check_range(cfg, "method.eps", 0.0, lo_open=True)
