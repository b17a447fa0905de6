"""What every training method shares: the classification term and the attack.

A method is a pure function
``loss(ctx, params, batch_stats, batch, key) -> (loss, (metrics, new_batch_stats))``
where ``ctx`` is a :class:`MethodContext` built once from the config. The
method decides weighting and reduction exactly as its paper writes them
(DESIGN §3.5).
"""

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections

from arjax import attacks, losses
from arjax.config_lib import check_choice, check_range
from arjax.models import ModelFns
from arjax.types import Array, PRNGKey, PyTree

# Classification losses a method can train with (per example, [B]).
CLS_LOSSES: dict[str, Callable[[Array, Array], Array]] = {
    "ce": losses.classification_loss,
    "weighted_bce": losses.weighted_bce,
    # nnU-Net's segmentation loss: pixel-mean CE + (1 - soft Dice), per example
    "dice_ce": losses.dice_ce_loss,
}
# Attacks a training method can use (inside the loss); all run via attacks.run_attack.
ATTACKS = ("fgsm", "pgd")


@dataclasses.dataclass(frozen=True)
class MethodContext:
    """Static pieces a method loss closes over.

    Attributes:
      model: the model's pure functions.
      cfg: the ``method`` config section.
      bounds: valid input range ``(lo, hi)`` or None (two-moons points).
    """

    model: ModelFns
    cfg: ml_collections.ConfigDict
    bounds: tuple[float, float] | None

    def cls_loss(self, logits: Array, labels: Array) -> Array:
        """Per-example classification loss ``[B]`` named by ``method.cls_loss``."""
        return CLS_LOSSES[self.cfg.get("cls_loss", "ce")](logits, labels)

    def correct(self, logits: Array, labels: Array) -> Array:
        """Whether each sample is correct, ``[B]``, under ``method.dice_threshold``.

        A segmentation sample is correct when its Dice is at least ``method.dice_threshold``
        (IMA's segmentation rule; 0.6 when the method has no such field); other heads
        ignore the threshold.
        """
        return self.correct_fn()(logits, labels)

    def correct_fn(self) -> Callable[[Array, Array], Array]:
        """:meth:`correct` as a function ``(logits, labels) -> bool [B]`` (for BPGD)."""
        threshold = float(self.cfg.get("dice_threshold", losses.DICE_THRESHOLD))
        return functools.partial(losses.predictions_correct, dice_threshold=threshold)

    def attack(
        self,
        params: PyTree,
        batch_stats: PyTree,
        x: Array,
        y: Array,
        key: PRNGKey,
        eps: Array | float | None = None,
    ) -> Array:
        """Adversarial inputs for ``x`` from the configured attack (gradients stopped).

        The attack is :meth:`attack_spec` run by :func:`arjax.attacks.run_attack`: FGSM
        steps once by ``eps``; PGD uses ``method.step_size`` when set, else the registry's
        rule ``alpha * eps / num_steps`` (IMA's alpha = 4; Madry's 2.5 is ``alpha=2.5``).
        The model runs in eval mode unless ``method.attack_train_mode`` is set.
        ``eps`` (a float or per-sample ``[B]``) overrides ``method.eps``.
        """
        cfg = self.cfg
        f = attack_logits_fn(self.model, params, batch_stats, cfg.get("attack_train_mode", False))
        return attacks.run_attack(self.attack_spec(), f, x, y, key, eps=eps, bounds=self.bounds)

    def boundary_search(
        self,
        params: PyTree,
        batch_stats: PyTree,
        x: Array,
        y: Array,
        key: PRNGKey,
        eps: Array,
        clean_logits: Array,
        extend_to: float | None = None,
        logits_in_attack_mode: bool = False,
    ) -> attacks.BoundaryResult:
        """BPGD (:func:`arjax.attacks.bpgd`) inside the per-sample radii ``eps`` ``[B]``.

        The search's fields are ``method.{num_steps, num_bisections, alpha, norm,
        attack_loss, random_start, bracket, side}`` (IMA, MMA), "correct" is
        :meth:`correct` (Dice >= ``method.dice_threshold`` for segmentation); the model runs in eval
        mode unless ``method.attack_train_mode``. ``clean_logits`` ``[B, ...]`` are the
        loss's train-mode logits at ``x``: BPGD reuses them to find the samples
        misclassified at ``x`` (saving a forward pass) only where they are what the
        attack's mode gives too (no batch statistics, or the attack in train mode).
        ``logits_in_attack_mode`` says they were computed in the attack's mode already
        (IMA's epoch pass). ``extend_to`` is BPGD's AN-PGD ray extension (MMA).
        """
        cfg = self.cfg
        f = attack_logits_fn(self.model, params, batch_stats, cfg.attack_train_mode)
        same_mode = (
            logits_in_attack_mode or cfg.attack_train_mode or not jax.tree.leaves(batch_stats)
        )
        return attacks.bpgd(
            f,
            x,
            y,
            key,
            eps=eps,
            num_steps=cfg.num_steps,
            num_bisections=cfg.num_bisections,
            alpha=cfg.alpha,
            norm=cfg.norm,
            loss=cfg.attack_loss,
            random_start=cfg.random_start,
            bounds=self.bounds,
            bracket=cfg.bracket,
            side=cfg.side,
            clean_logits=clean_logits if same_mode else None,
            extend_to=extend_to,
            correct_fn=self.correct_fn(),
        )

    def attack_spec(self) -> attacks.AttackSpec:
        """The ``method.*`` attack fields as an :class:`arjax.attacks.AttackSpec`."""
        cfg = self.cfg
        return attacks.make_spec(
            cfg.attack,
            cfg.norm,
            cfg.eps,
            cfg.get("num_steps", 1),
            where="method.attack",
            loss=cfg.attack_loss,
            alpha=cfg.get("alpha", attacks.DEFAULT_ALPHA),
            step_size=cfg.get("step_size", None) or None,
            random_start=cfg.get("random_start", True),
        )


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


def mean(values: Array) -> Array:
    """Batch mean of per-example values ``[B] -> []``."""
    return jnp.mean(values)


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of the batch classified correctly (a metric, not differentiated)."""
    return jnp.mean(losses.predictions_correct(jax.lax.stop_gradient(logits), labels))


def validate_attack(cfg: ml_collections.ConfigDict) -> None:
    """Checks the attack fields shared by adversarial methods (``method.*``)."""
    check_choice(cfg, "method.attack", ATTACKS)
    check_choice(cfg, "method.norm", attacks.NORMS)
    check_choice(cfg, "method.attack_loss", ("ce", "margin", "weighted_bce"))
    check_range(cfg, "method.eps", 0.0, lo_open=True)
    if cfg.method.attack == "pgd":
        check_range(cfg, "method.num_steps", 1, integer=True)
        check_range(cfg, "method.alpha", 0.0, lo_open=True)


def validate_common(cfg: ml_collections.ConfigDict) -> None:
    """Checks fields every method has."""
    check_choice(cfg, "method.cls_loss", CLS_LOSSES)


def attack_defaults() -> dict:
    """Default attack fields (PGD-20, alpha 4, linf, random start: IMA's ``adv eps``)."""
    return dict(
        attack="pgd",
        eps=0.1,
        num_steps=20,
        alpha=4.0,
        step_size=None,
        norm="linf",
        attack_loss="ce",
        random_start=True,
        attack_train_mode=False,
    )
