"""MMA: max-margin adversarial training (Ding et al., ICLR 2020, arXiv 1812.02637).

MMA maximises each correctly classified sample's input-space margin ``d_θ(x, y)`` (the
norm of its shortest successful perturbation ``δ*``) by training on ``x + δ*``, up to a
hinge ``d_max``. The paper's MMA loss for a batch of size ``B`` (summed as in the paper,
divided by ``B`` as in the authors' code) is

    L^MMA = (1/B) [ Σ_{i ∈ S+, d_θ(x_i) < d_max} L(x_i + δ*_i, y_i) + Σ_{j ∈ S-} L(x_j, y_j) ]

with ``S+`` / ``S-`` the samples classified correctly / wrongly at ``x`` and ``L`` the
cross-entropy (samples whose margin reaches ``d_max`` get no adversarial loss). Its
experiments train "MMA" on the combination with the clean loss

    L = c · mean_b CE(x_b, y_b) + (1 - c) · L^MMA,    c = clean_loss_coeff = 1/3

(``c = 0`` is its "OMMA"). The authors' code (BorealisAI/mma_training, ``trainer.py``,
default ``clean_loss_coeff = 1/3``) weights the two gradients by ``c`` and ``1 - c``.

``δ*`` comes from BPGD (:func:`arjax.attacks.bpgd`) used as the paper's adaptive-norm
PGD (AN-PGD, the code's ``anpgd.py``): PGD inside the sample's previous margin ``ε_i``
(the per-sample table in the ``TrainState``), then bisection on the ray from ``x``
through the PGD point, over ``[0, ε_i]`` when the PGD point is misclassified and over
``[ε_i, search_scale · d_max]`` otherwise (``bracket="clean_to_last"`` with
``extend_to``). The new margin is the norm of the point found; a sample the search never
flips gets the search ceiling, a misclassified one the floor ``eps_min``, and every
margin is clipped to ``[eps_min, search_scale · d_max]`` (the code's ``max(mineps, ·)``
and ``maxeps = 1.05 · hinge_maxeps``).

Defaults: ``d_max = 0.3`` (the IMA paper's "maximum noise level 0.3 for IMA, MMA and
TRADES"), ``c = 1/3``, 20 PGD steps (IMA's comparison; MMA's code uses 40 on MNIST, 10
on CIFAR-10) of ``alpha · ε_i / num_steps`` with ``alpha = 2.5`` (the code's
``eps_iter_scale``), 10 bisection steps, the logit-margin attack loss (the code's soft
logit margin, "slm"), random start, attacks in eval mode, ``search_scale = 1.05``.
``eps_min = 0`` means ``0.2 · d_max``: the code's floor relative to its hinge
(MNIST-L∞ 0.1 / 0.45, CIFAR-10-L∞ 0.005 / (8/255)). Differences from the code: its
soft logit margin is arjax's (hard) logit margin here; like it, the bisection returns
the final bracket's middle (``side`` chooses an end instead), and the CE of the MMA term
comes from one train-mode forward pass over the mixed batch (``x + δ*`` where found, else
``x``).
"""

import jax
import jax.numpy as jnp
import ml_collections

from arjax import attacks, losses, margins
from arjax.config_lib import check_choice, check_range
from arjax.methods.context import MethodContext, validate_common

# eps_min = 0 means this fraction of d_max (the authors' code's mineps / hinge_maxeps).
EPS_MIN_FRACTION = 0.2


def margin_range(cfg: ml_collections.ConfigDict) -> tuple[float, float]:
    """``(eps_min, search_scale * d_max)``: the table's floor (initial value) and ceiling.

    Args:
      cfg: the ``method`` section of ``mma``.
    """
    floor = cfg.eps_min or EPS_MIN_FRACTION * cfg.d_max
    return float(floor), float(cfg.search_scale * cfg.d_max)


def loss(ctx: MethodContext, params, batch_stats, batch, key):
    """MMA loss ``c · mean CE(x) + (1 - c) · L^MMA`` and the batch's new margins.

    Args:
      ctx: method context.
      params: model parameters.
      batch_stats: batch statistics.
      batch: ``image`` ``[B, ...]``, ``label`` ``[B]``, ``margin`` ``[B]`` (the previous
        margins, gathered from the table by the training step).
      key: PRNG key for the PGD random start.

    Returns:
      ``(loss [], (metrics, new_batch_stats))``; ``metrics[margins.MARGIN_KEY]`` holds
      the new margins ``[B]`` for the step to scatter.
    """
    cfg = ctx.cfg
    x, y = batch["image"], batch["label"]
    floor, ceiling = margin_range(cfg)
    radius = jnp.clip(batch["margin"], floor, ceiling)
    logits, _, stats = ctx.model.apply(params, batch_stats, x, train=True)
    correct = losses.predictions_correct(jax.lax.stop_gradient(logits), y)
    clean = jnp.mean(ctx.cls_loss(logits, y))
    found = ctx.boundary_search(params, batch_stats, x, y, key, radius, logits, extend_to=ceiling)
    # One forward pass over the batch as MMA trains on it: x + δ* for correctly
    # classified samples whose search flipped them, x for the others (BPGD returns x).
    logits_m, _, stats = ctx.model.apply(params, stats, found.images, train=True)
    hinged = correct & found.crossed & (found.distance < cfg.d_max)
    weight = jnp.where(correct, hinged, True).astype(logits_m.dtype)
    mma = jnp.sum(weight * ctx.cls_loss(logits_m, y)) / x.shape[0]
    c = cfg.clean_loss_coeff
    value = c * clean + (1.0 - c) * mma
    estimate = jnp.where(found.crossed, found.distance, ceiling)
    new_margins = jnp.clip(jnp.where(correct, estimate, floor), floor, ceiling)
    metrics = {
        "loss": value,
        "loss_clean": clean,
        "loss_mma": mma,
        "accuracy": jnp.mean(correct),
        "hinged": jnp.mean(hinged),
        "margin_mean": jnp.mean(new_margins),
        margins.MARGIN_KEY: new_margins,
    }
    return value, (metrics, stats)


def defaults() -> dict:
    """Default ``method`` fields of ``mma`` (see the module docstring for their sources)."""
    return dict(
        name="mma",
        cls_loss="ce",
        d_max=0.3,
        clean_loss_coeff=1.0 / 3.0,
        eps_min=0.0,
        search_scale=1.05,
        num_steps=20,
        num_bisections=10,
        alpha=2.5,
        norm="linf",
        attack_loss="margin",
        random_start=True,
        bracket="clean_to_last",
        side="middle",
        attack_train_mode=False,
    )


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``method.*`` fields of ``mma``."""
    validate_common(cfg)
    check_range(cfg, "method.d_max", 0.0, lo_open=True)
    check_range(cfg, "method.clean_loss_coeff", 0.0, 1.0)
    check_range(cfg, "method.search_scale", 1.0)
    # 0 means EPS_MIN_FRACTION * d_max.
    check_range(cfg, "method.eps_min", 0.0, cfg.method.d_max)
    check_range(cfg, "method.num_steps", 1, integer=True)
    check_range(cfg, "method.num_bisections", 0, integer=True)
    check_range(cfg, "method.alpha", 0.0, lo_open=True)
    check_choice(cfg, "method.norm", attacks.NORMS)
    check_choice(cfg, "method.attack_loss", attacks.BPGD_LOSSES)
    check_choice(cfg, "method.bracket", attacks.BRACKETS)
    check_choice(cfg, "method.side", attacks.SIDES)
