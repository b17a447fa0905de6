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

import jax
import jax.numpy as jnp
import ml_collections

from arjax.attacks.objectives import kl_objective
from arjax.config_lib import ConfigError, check_range, get_path
from arjax.methods.context import (
    MethodContext,
    accuracy,
    attack_defaults,
    mean,
    validate_attack,
    validate_common,
)

DEFAULT_LEVELS = (1.0 / 3.0, 2.0 / 3.0, 1.0)


def instances(ctx: MethodContext, params, batch_stats, x, y, key) -> tuple[jax.Array, jax.Array]:
    """The ``K`` adversarial instances of the batch, one per level.

    Args:
      ctx: method context (``levels``, ``eps`` and the attack fields in ``ctx.cfg``).
      params: model parameters.
      batch_stats: batch statistics.
      x: inputs ``[B, ...]``.
      y: labels ``[B]`` or ``[B, C]``.
      key: PRNG key.

    Returns:
      ``(x_inst [K * B, ...], y_inst [K * B, ...])``, level-major (rows ``k * B .. (k + 1)
      * B - 1`` are level ``k``); gradients stopped.
    """
    levels = tuple(ctx.cfg.levels)
    k = len(levels)
    xs = jnp.concatenate([x] * k)
    ys = jnp.concatenate([y] * k)
    radii = jnp.repeat(jnp.asarray(levels, x.dtype) * ctx.cfg.eps, x.shape[0])
    return ctx.attack(params, batch_stats, xs, ys, key, eps=radii), ys


def loss(ctx: MethodContext, params, batch_stats, batch, key):
    """MIRST loss (module docstring's ``L``).

    Returns:
      ``(loss [], (metrics, new_batch_stats))``; metrics hold the clean and instance
      terms, the self-training KL and the clean and largest-level accuracies.
    """
    x, y = batch["image"], batch["label"]
    k = len(ctx.cfg.levels)
    logits, _, stats = ctx.model.apply(params, batch_stats, x, train=True)
    x_inst, y_inst = instances(ctx, params, batch_stats, x, y, key)
    logits_inst, _, stats = ctx.model.apply(params, stats, x_inst, train=True)
    clean = mean(ctx.cls_loss(logits, y))
    per_level = jnp.mean(ctx.cls_loss(logits_inst, y_inst).reshape(k, -1), axis=1)  # [K]
    supervised = (clean + jnp.sum(per_level)) / (k + 1)
    teacher = jax.lax.stop_gradient(jnp.concatenate([logits] * k))
    self_training = mean(kl_objective(logits_inst, y_inst, teacher))
    value = supervised + ctx.cfg.beta * self_training
    last = slice((k - 1) * x.shape[0], None)  # the largest level's instances
    metrics = {
        "loss": value,
        "loss_clean": clean,
        "loss_adv": jnp.mean(per_level),
        "loss_kl": self_training,
        "accuracy": accuracy(logits, y),
        "accuracy_adv": accuracy(logits_inst[last], y_inst[last]),
    }
    return value, (metrics, stats)


def defaults() -> dict:
    """Default ``method`` fields of ``mirst`` (levels eps * (1/3, 2/3, 1), beta = 1, PGD-20)."""
    return dict(name="mirst", cls_loss="ce", levels=DEFAULT_LEVELS, beta=1.0, **attack_defaults())


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``method.*`` fields of ``mirst``; ``levels`` is a non-empty tuple in (0, 1]."""
    validate_common(cfg)
    check_range(cfg, "method.beta", 0.0)
    levels = get_path(cfg, "method.levels")
    bad = (
        not isinstance(levels, tuple | list)
        or not levels
        or any(isinstance(v, bool) or not isinstance(v, int | float) for v in levels)
        or any(not 0.0 < v <= 1.0 for v in levels)
    )
    if bad:
        raise ConfigError(
            f"method.levels={levels!r}: needs a non-empty tuple of fractions of method.eps, "
            "each in (0, 1], e.g. (0.333, 0.667, 1.0)"
        )
    validate_attack(cfg)
