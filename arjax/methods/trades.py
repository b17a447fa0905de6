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
"""

import jax
import ml_collections

from arjax import attacks
from arjax.attacks.objectives import kl_objective
from arjax.config_lib import ConfigError, check_choice, check_range
from arjax.methods.context import (
    MethodContext,
    accuracy,
    attack_defaults,
    attack_logits_fn,
    mean,
    validate_common,
)

DEFAULT_BETA = 6.0
# Attack fields TRADES fixes: always PGD on the KL objective from a random start.
_FIXED_ATTACK_FIELDS = ("attack", "attack_loss", "random_start")


def effective_beta(cfg: ml_collections.ConfigDict) -> float:
    """``beta``, or ``1 / inv_beta`` when ``inv_beta > 0`` (IMA's notation)."""
    inv = cfg.get("inv_beta", 0.0)
    return 1.0 / inv if inv > 0 else cfg.beta


def kl_attack(ctx: MethodContext, params, batch_stats, x, y, key) -> jax.Array:
    """``x'``: PGD maximising ``KL(P(x) || P(x'))``, random start, gradients stopped.

    The step is ``method.step_size`` when set, else ``alpha * eps / num_steps`` (the
    rule of :meth:`MethodContext.attack`). The clean logits the KL is taken from are
    computed by the attack's own model (eval mode unless ``attack_train_mode``).
    """
    cfg = ctx.cfg
    f = attack_logits_fn(ctx.model, params, batch_stats, cfg.get("attack_train_mode", False))
    step = cfg.get("step_size", None) or cfg.alpha * cfg.eps / cfg.num_steps
    return attacks.pgd(
        f,
        x,
        y,
        key,
        eps=cfg.eps,
        step_size=step,
        num_steps=cfg.num_steps,
        norm=cfg.norm,
        loss="kl",
        random_start=True,
        bounds=ctx.bounds,
    )


def loss(ctx: MethodContext, params, batch_stats, batch, key):
    """TRADES loss ``mean_b[L_cls(x_b) + beta * KL(P(x_b) || P(x'_b))]``.

    Returns:
      ``(loss [], (metrics, new_batch_stats))``; metrics hold the two terms and the
      clean and adversarial accuracies.
    """
    x, y = batch["image"], batch["label"]
    logits, _, stats = ctx.model.apply(params, batch_stats, x, train=True)
    x_adv = kl_attack(ctx, params, batch_stats, x, y, key)
    logits_adv, _, stats = ctx.model.apply(params, stats, x_adv, train=True)
    natural = mean(ctx.cls_loss(logits, y))
    robust = mean(kl_objective(logits_adv, y, logits))
    value = natural + effective_beta(ctx.cfg) * robust
    metrics = {
        "loss": value,
        "loss_clean": natural,
        "loss_kl": robust,
        "accuracy": accuracy(logits, y),
        "accuracy_adv": accuracy(logits_adv, y),
    }
    return value, (metrics, stats)


def defaults() -> dict:
    """Default ``method`` fields of ``trades`` (beta = 6, PGD-10 on the KL, linf)."""
    attack = {k: v for k, v in attack_defaults().items() if k not in _FIXED_ATTACK_FIELDS}
    attack["num_steps"] = 10
    return dict(name="trades", cls_loss="ce", beta=DEFAULT_BETA, inv_beta=0.0, **attack)


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``method.*`` fields of ``trades``."""
    validate_common(cfg)
    check_range(cfg, "method.beta", 0.0)
    check_range(cfg, "method.inv_beta", 0.0)
    if cfg.method.inv_beta != 0.0 and cfg.method.beta != DEFAULT_BETA:
        raise ConfigError(
            f"method.beta={cfg.method.beta!r} and method.inv_beta={cfg.method.inv_beta!r} "
            "are both set; give one (inv_beta > 0 means beta = 1/inv_beta)"
        )
    check_choice(cfg, "method.norm", attacks.NORMS)
    check_range(cfg, "method.eps", 0.0, lo_open=True)
    check_range(cfg, "method.num_steps", 1, integer=True)
    check_range(cfg, "method.alpha", 0.0, lo_open=True)
