"""IMA: increasing-margin adversarial training (Ma et al., Algorithms 1-3).

Per batch, with the batch's margins ``eps_i`` gathered from the margin table:

1. classify the clean batch; masks split it into wrongly (X0) and correctly
   (X1) classified samples;
2. BPGD (Alg. 3) inside each sample's margin gives a boundary point
   ``x_n`` and whether the search ``crossed``;
3. ``L = ((1 - beta) (L0 + L1) + beta L2) / batch_size`` (Alg. 1) with summed
   cross-entropies: L0 over X0, L1 over X1, L2 over the noisy copies of the X1
   samples that crossed;
4. the margins (Alg. 2, ``arjax.margins``) are updated, by ``method.margin_update``:

   * ``"epoch"`` (default, the paper: "the sample margins are updated after each
     epoch", Alg. 2 "update margin estimation after an epoch"): the training step
     leaves the table alone; after each epoch a pass over the training split
     (:func:`estimate_margins`, run by ``arjax.training.epoch_margins``) classifies
     every sample with the updated model and refines or expands its margin from a
     new BPGD search. Costs one more BPGD per training sample and epoch (Moons: the
     pass takes about as long as the epoch's training steps).
   * ``"batch"``: the training step's own BPGD result (found with the model before
     its update) updates the batch's margins; no extra pass.

   ``"epoch"`` is the default because it is the paper's timing; on Moons
   (``configs/moons_ima.py:ima``, 30 epochs, seeds 0-2) both give the same robust
   curve within seed noise (area 0.844 (0.003) vs 0.844 (0.001)), so ``"batch"`` is
   a faithful-enough way to halve IMA's training cost there.

The margin is each sample's estimated distance to the decision boundary, so BPGD's
default bracket ``"clean_to_last_wrong"`` bisects on the ray from ``x`` through the last
misclassified PGD iterate (``arjax.attacks.bpgd``): the estimate shrinks to the distance
also from a random start in high dimension. ``bracket="recorded"`` is Alg. 3 read
literally (adjacent PGD iterates), whose boundary point lies ~``eps`` from ``x`` after a
random start, so that margins only grow or hold.

Segmentation (Ma et al., "Experiments on Segmentation"; a U-Net on masks): a sample is
"correct" when its Dice is at least ``method.dice_threshold`` (0.6), for the X0/X1 split,
BPGD's crossing and bisection, and Alg. 2; ``method.shrink_misclassified=True`` is the
paper's change of Alg. 2 for segmentation ("the re-initialize operation (Line 4) ... is
replaced by refine/shrink (Line 8)", because nnU-Net's augmentation makes a sample look
misclassified now and then): arjax reads it as a misclassified sample's margin
shrinking by one step, ``eps - delta`` (floored at ``delta``), instead of dropping to
``delta``; the text gives no formula (Line 8 needs a boundary point, which a sample
already misclassified at ``x`` has not). ``configs/segmentation_ima.py`` sets it, with
the L2 norm of the paper's segmentation experiments.

Paper defaults: beta = 0.5, N_PGD = 20, N_binary = 10, alpha = 4, attacks in
eval mode, margins after each epoch. Options reproducing the authors' public code:
``bracket = "clean_to_last"``, ``margin_momentum < 1`` (running average),
``reset_misclassified = False``, ``attack_train_mode = True``.
"""

import jax
import jax.numpy as jnp
import ml_collections

from arjax import attacks, margins
from arjax.config_lib import check_choice, check_range
from arjax.methods.context import MethodContext, attack_logits_fn, validate_common

# When Alg. 2 runs: "epoch" (paper: a pass after each epoch with the updated model, see
# estimate_margins) or "batch" (from the training step's own BPGD, before its update).
MARGIN_UPDATES = ("epoch", "batch")


def loss(ctx: MethodContext, params, batch_stats, batch, key):
    """IMA loss (Alg. 1) and the batch's margin update (Alg. 2).

    Args:
      ctx: method context.
      params: model parameters.
      batch_stats: batch statistics.
      batch: ``image`` ``[B, ...]``, ``label`` ``[B]``, ``margin`` ``[B]`` (gathered
        from the table by the training step).
      key: PRNG key for BPGD's random start.

    Returns:
      ``(loss [], (metrics, new_batch_stats))``; ``metrics[margins.MARGIN_KEY]``
      holds the new margins ``[B]`` for the step to scatter: Alg. 2's update with
      ``margin_update="batch"``, the margins unchanged with ``"epoch"`` (the pass after
      the epoch updates them).
    """
    cfg = ctx.cfg
    x, y, eps = batch["image"], batch["label"], batch["margin"]
    beta = cfg.beta
    logits, _, stats = ctx.model.apply(params, batch_stats, x, train=True)
    correct = ctx.correct(jax.lax.stop_gradient(logits), y)
    ce = ctx.cls_loss(logits, y)
    l0 = jnp.sum(jnp.where(correct, 0.0, ce))
    l1 = jnp.sum(jnp.where(correct, ce, 0.0))
    found = ctx.boundary_search(params, batch_stats, x, y, key, eps, logits)
    use = correct & found.crossed
    logits_n, _, stats = ctx.model.apply(params, stats, found.images, train=True)
    l2 = jnp.sum(jnp.where(use, ctx.cls_loss(logits_n, y), 0.0))
    batch_size = x.shape[0]
    value = ((1.0 - beta) * (l0 + l1) + beta * l2) / batch_size
    if cfg.margin_update == "batch":
        new_margins = _updated(cfg, eps, correct, found)
    else:  # "epoch": the pass after the epoch updates them (estimate_margins)
        new_margins = eps
    metrics = {
        "loss": value,
        "accuracy": jnp.mean(correct),
        "crossed": jnp.mean(use),
        "margin_mean": jnp.mean(new_margins),
        margins.MARGIN_KEY: new_margins,
    }
    return value, (metrics, stats)


def estimate_margins(ctx: MethodContext, params, batch_stats, batch, key):
    """Alg. 2 for one batch with the model as it is now: the ``margin_update="epoch"`` pass.

    The paper's timing: after each epoch, every training sample is classified by the
    updated model (misclassified: re-initialise to Δε), then BPGD inside its margin
    refines (crossed) or expands (not crossed) it. The classification and BPGD run in
    the attack's mode (eval mode unless ``method.attack_train_mode``).

    Args:
      ctx: method context.
      params: model parameters (after the epoch's updates).
      batch_stats: batch statistics.
      batch: ``image`` ``[B, ...]``, ``label`` ``[B]``, ``margin`` ``[B]`` (the table's).
      key: PRNG key for BPGD's random start.

    Returns:
      float ``[B]`` new margins in ``[delta, eps_max]``.
    """
    x, y, eps = batch["image"], batch["label"], batch["margin"]
    f = attack_logits_fn(ctx.model, params, batch_stats, ctx.cfg.attack_train_mode)
    logits = f(x)
    correct = ctx.correct(logits, y)
    found = ctx.boundary_search(
        params, batch_stats, x, y, key, eps, logits, logits_in_attack_mode=True
    )
    return _updated(ctx.cfg, eps, correct, found)


def _updated(cfg, eps, correct, found: attacks.BoundaryResult):
    """Alg. 2's rules (:func:`arjax.margins.update`) on one BPGD result: ``[B]``."""
    return margins.update(
        eps,
        correct,
        found.crossed,
        found.distance,
        delta=cfg.delta,
        eps_max=cfg.eps_max,
        momentum=cfg.margin_momentum,
        reset_misclassified=cfg.reset_misclassified,
        shrink_misclassified=cfg.get("shrink_misclassified", False),
    )


def defaults() -> dict:
    """Default ``method`` fields (paper: beta 0.5, BPGD 20 + 10 steps, alpha 4)."""
    return dict(
        name="ima",
        cls_loss="ce",
        beta=0.5,
        eps_max=0.3,
        delta=0.0,
        num_steps=20,
        num_bisections=10,
        alpha=4.0,
        norm="linf",
        attack_loss="ce",
        random_start=True,
        bracket="clean_to_last_wrong",
        side="middle",
        margin_update="epoch",
        margin_momentum=1.0,
        reset_misclassified=True,
        attack_train_mode=False,
        # segmentation (Ma et al., Experiments on Segmentation): "correct" = Dice >= this
        dice_threshold=0.6,
        # segmentation: a misclassified sample's margin shrinks by delta instead of the
        # re-initialisation to delta (Alg. 2 line 4 "replaced by refine/shrink")
        shrink_misclassified=False,
    )


def resolve(cfg: ml_collections.ConfigDict) -> None:
    """Fills ``method.delta`` = ε_max / number of adversarial epochs when it is 0."""
    if not cfg.method.delta:
        cfg.method.delta = cfg.method.eps_max / cfg.train.num_epochs


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``method.*`` fields of ``ima``."""
    validate_common(cfg)
    check_range(cfg, "method.beta", 0.0, 1.0)
    check_range(cfg, "method.eps_max", 0.0, lo_open=True)
    check_range(cfg, "method.delta", 0.0, cfg.method.eps_max)
    check_range(cfg, "method.num_steps", 1, integer=True)
    check_range(cfg, "method.num_bisections", 0, integer=True)
    check_range(cfg, "method.alpha", 0.0, lo_open=True)
    check_range(cfg, "method.margin_momentum", 0.0, 1.0, lo_open=True)
    if "dice_threshold" in cfg.method:
        check_range(cfg, "method.dice_threshold", 0.0, 1.0)
    check_choice(cfg, "method.norm", attacks.NORMS)
    check_choice(cfg, "method.attack_loss", ("ce", "margin"))
    check_choice(cfg, "method.bracket", attacks.BRACKETS)
    check_choice(cfg, "method.margin_update", MARGIN_UPDATES)
    check_choice(cfg, "method.side", ("middle", "correct", "wrong"))
