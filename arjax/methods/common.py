"""What the methods' losses share: classification losses, the training attack, BPGD.

Pure jax functions of a :class:`~arjax.methods.base.Context` and the method's own typed
fields; the method modules reach this module through :mod:`arjax.lazy` so that they
import without jax.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from arjax import attacks, losses
from arjax.methods.context import Context
from arjax.models import ModelFns
from arjax.types import Array, PRNGKey, PyTree

# Per-example classification losses [B] by ``method.cls_loss`` (base.CLS_LOSSES).
CLS_LOSS_FNS: dict[str, Callable[[Array, Array], Array]] = {
    "ce": losses.classification_loss,
    "weighted_bce": losses.weighted_bce,
    # nnU-Net's segmentation loss: pixel-mean CE + (1 - soft Dice), per example
    "dice_ce": losses.dice_ce_loss,
}
# The step count of a training attack written without one ("pgd:linf:0.1").
DEFAULT_STEPS = 20


def cls_loss(name: str, logits: Array, labels: Array) -> Array:
    """Per-example classification loss ``[B]`` named ``name`` (``method.cls_loss``)."""
    return CLS_LOSS_FNS[name](logits, labels)


def mean(values: Array) -> Array:
    """Batch mean of per-example values ``[B] -> []``."""
    return jnp.mean(values)


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of the batch classified correctly (a metric, not differentiated)."""
    return jnp.mean(losses.predictions_correct(jax.lax.stop_gradient(logits), labels))


def correct_fn(dice_threshold: float = losses.DICE_THRESHOLD) -> Callable[[Array, Array], Array]:
    """``(logits, labels) -> bool [B]``: correct (segmentation: Dice >= ``dice_threshold``)."""
    return functools.partial(losses.predictions_correct, dice_threshold=float(dice_threshold))


def attack_logits_fn(
    model: ModelFns, params: PyTree, batch_stats: PyTree, train: bool
) -> Callable[[Array], Array]:
    """The model as an attack sees it: ``logits_fn`` with the parameters' gradients stopped.

    An attack's result carries no gradient, but without the stop ``jax.grad`` of the
    training loss would still linearise every attack loop with respect to the parameters
    before finding that out: that doubles the traced program of the adversarial and IMA
    steps and costs seconds of trace and XLA compile time.

    Args:
      model: the model's pure functions.
      params: parameters (possibly being differentiated).
      batch_stats: batch statistics.
      train: normalise with the batch's statistics (``method.attack_train_mode``).

    Returns:
      images ``[B, ...]`` -> logits.
    """
    params, batch_stats = jax.lax.stop_gradient((params, batch_stats))
    return model.logits_fn(params, batch_stats, train=train)


def parse_training_attack(value, where: str) -> attacks.AttackSpec:
    """A method's ``attack`` field as an :class:`~arjax.attacks.AttackSpec` (radius > 0).

    Raises:
      ConfigError: naming ``where``, the grammar and the valid choices.
    """
    spec = attacks.parse_attack(value, default_steps=DEFAULT_STEPS, where=where)
    if not spec.eps > 0:
        raise attacks.SpecError(f"{where}={value!r}: the radius must be > 0")
    return spec


def attack(
    ctx: Context,
    spec: attacks.AttackSpec,
    train_mode: bool,
    params: PyTree,
    batch_stats: PyTree,
    x: Array,
    y: Array,
    key: PRNGKey,
    eps: Array | float | None = None,
) -> Array:
    """Adversarial inputs for ``x`` from the training attack ``spec`` (gradients stopped).

    Run by :func:`arjax.attacks.run_attack`: FGSM steps once by ``eps``; PGD by
    ``spec.step_size`` when set, else the registry's ``alpha * eps / num_steps`` (IMA's
    alpha = 4; Madry's 2.5 is ``:alpha=2.5``). The model runs in eval mode unless
    ``train_mode`` (``method.attack_train_mode``). ``eps`` (a float or per-sample
    ``[B]``) overrides ``spec.eps``.
    """
    f = attack_logits_fn(ctx.model, params, batch_stats, train_mode)
    return attacks.run_attack(spec, f, x, y, key, eps=eps, bounds=ctx.bounds)


def perturbed_subset(key: PRNGKey, batch_size: int, fraction: float) -> Array:
    """Indices ``[round(fraction * B)]`` of a uniformly random subset of the batch."""
    count = int(round(fraction * batch_size))
    return jax.random.permutation(key, batch_size)[:count]


def mixed_adversarial_batch(
    ctx: Context,
    spec: attacks.AttackSpec,
    train_mode: bool,
    fraction: float,
    params: PyTree,
    batch_stats: PyTree,
    x: Array,
    y: Array,
    key: PRNGKey,
) -> Array:
    """The batch ``x'`` with a random ``fraction`` of it attacked (Khakzar: half).

    Only the ``round(fraction * B)`` chosen examples are attacked (a static-size gather,
    then a scatter back), so ``fraction = 0.5`` costs half the attack passes.

    Returns:
      ``[B, ...]``: adversarial where chosen, clean elsewhere; gradients stopped.
    """
    k_subset, k_attack = jax.random.split(key)
    if fraction >= 1.0:
        return attack(ctx, spec, train_mode, params, batch_stats, x, y, k_attack)
    idx = perturbed_subset(k_subset, x.shape[0], fraction)
    x_adv = attack(ctx, spec, train_mode, params, batch_stats, x[idx], y[idx], k_attack)
    return x.at[idx].set(x_adv)


def boundary_search(
    ctx: Context,
    method,
    params: PyTree,
    batch_stats: PyTree,
    x: Array,
    y: Array,
    key: PRNGKey,
    eps: Array,
    clean_logits: Array,
    *,
    dice_threshold: float = losses.DICE_THRESHOLD,
    extend_to: float | None = None,
    logits_in_attack_mode: bool = False,
) -> attacks.BoundaryResult:
    """BPGD (:func:`arjax.attacks.bpgd`) inside the per-sample radii ``eps`` ``[B]``.

    The search's settings are ``method``'s fields ``num_steps, num_bisections, alpha,
    norm, attack_loss, random_start, bracket, side, attack_train_mode`` (IMA, MMA);
    "correct" is Dice >= ``dice_threshold`` for segmentation. ``clean_logits``
    ``[B, ...]`` are the loss's train-mode logits at ``x``: BPGD reuses them to find the
    samples misclassified at ``x`` (saving a forward pass) only where they are what the
    attack's mode gives too (no batch statistics, or the attack in train mode).
    ``logits_in_attack_mode`` says they were computed in the attack's mode already (IMA's
    epoch pass). ``extend_to`` is BPGD's AN-PGD ray extension (MMA).
    """
    f = attack_logits_fn(ctx.model, params, batch_stats, method.attack_train_mode)
    same_mode = (
        logits_in_attack_mode or method.attack_train_mode or not jax.tree.leaves(batch_stats)
    )
    return attacks.bpgd(
        f,
        x,
        y,
        key,
        eps=eps,
        num_steps=method.num_steps,
        num_bisections=method.num_bisections,
        alpha=method.alpha,
        norm=method.norm,
        loss=method.attack_loss,
        random_start=method.random_start,
        bounds=ctx.bounds,
        bracket=method.bracket,
        side=method.side,
        clean_logits=clean_logits if same_mode else None,
        extend_to=extend_to,
        correct_fn=correct_fn(dice_threshold),
    )
