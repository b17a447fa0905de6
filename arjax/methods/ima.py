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
     (:meth:`IMA.refresh_state`, run by ``arjax.training.state_pass``) classifies
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

from __future__ import annotations

import dataclasses

from arjax.config_lib import ConfigError
from arjax.lazy import lazy_module
from arjax.methods.base import (
    BoundarySearchMethod,
    LossOutput,
    check_choice,
    check_range,
    register_method,
    set_derived,
)

common = lazy_module("arjax.methods.common")
jax = lazy_module("jax")
jnp = lazy_module("jax.numpy")
margins = lazy_module("arjax.margins")

# When Alg. 2 runs: "epoch" (paper: a pass after each epoch with the updated model, see
# refresh_state) or "batch" (from the training step's own BPGD, before its update).
MARGIN_UPDATES = ("epoch", "batch")


@register_method("ima")
@dataclasses.dataclass(frozen=True, kw_only=True)
class IMA(BoundarySearchMethod):
    """IMA (Ma et al., Algorithms 1-3); module docstring. State: ``{"margins": [N]}``.

    Attributes:
      beta: weight of the noisy-sample term L2 (Alg. 1), in [0, 1].
      eps_max: the margins' ceiling ε_max.
      delta: Δε, the expansion step and the floor; 0 means ε_max / ``num_epochs``
        (the paper's "number of adversarial training epochs"), computed here.
      margin_update: ``"epoch"`` (the paper) or ``"batch"``.
      margin_momentum: 1 replaces a margin by its new estimate; < 1 keeps a running
        average (the authors' code).
      reset_misclassified: a misclassified sample's margin goes back to Δε (paper).
      dice_threshold: segmentation: "correct" is Dice >= this.
      shrink_misclassified: segmentation: a misclassified sample's margin shrinks by Δε.
      num_epochs: the run's epoch count, from which ``delta = 0`` is derived (not a
        field; ``arjax.methods.from_config`` passes ``train.num_epochs``).
      (and the BPGD fields of :class:`~arjax.methods.base.BoundarySearchMethod`)
    """

    beta: float = 0.5
    eps_max: float = 0.3
    delta: float = 0.0
    margin_update: str = "epoch"
    margin_momentum: float = 1.0
    reset_misclassified: bool = True
    # segmentation (Ma et al., Experiments on Segmentation): "correct" = Dice >= this
    dice_threshold: float = 0.6
    # segmentation: a misclassified sample's margin shrinks by delta instead of the
    # re-initialisation to delta (Alg. 2 line 4 "replaced by refine/shrink")
    shrink_misclassified: bool = False
    num_epochs: dataclasses.InitVar[int | None] = None

    def __post_init__(self, num_epochs: int | None) -> None:
        if not self.delta:
            if not num_epochs:
                raise ConfigError(
                    "method.delta=0 means eps_max / the number of epochs, but no epoch count "
                    "was given: pass num_epochs=... or set method.delta"
                )
            set_derived(self, "delta", self.eps_max / num_epochs)
        super().__post_init__()

    def validate(self) -> None:
        """Checks every field (BPGD's too)."""
        super().validate()
        check_range(self, "beta", 0.0, 1.0)
        check_range(self, "eps_max", 0.0, lo_open=True)
        check_range(self, "delta", 0.0, self.eps_max)
        check_range(self, "margin_momentum", 0.0, 1.0, lo_open=True)
        check_range(self, "dice_threshold", 0.0, 1.0)
        check_choice(self, "margin_update", MARGIN_UPDATES)

    @property
    def margin_range(self) -> tuple[float, float]:
        """``(delta, eps_max)``: the margins' floor (and initial value) and ceiling."""
        return float(self.delta), float(self.eps_max)

    @property
    def refreshes_state(self) -> bool:
        """The paper's timing: the margins are re-estimated after each epoch."""
        return self.margin_update == "epoch"

    def loss(self, ctx, params, batch_stats, batch, state, key):
        """IMA loss (Alg. 1) and the batch's margin update (Alg. 2).

        Args:
          ctx: the model and the data's bounds.
          params: model parameters.
          batch_stats: batch statistics.
          batch: ``image`` ``[B, ...]``, ``label`` ``[B]``.
          state: ``{"margins": [B]}``, the batch's margins.
          key: PRNG key for BPGD's random start.

        Returns:
          ``(loss [], LossOutput(metrics, new_batch_stats, {"margins": [B]}))``: Alg. 2's
          update with ``margin_update="batch"``, the margins unchanged with ``"epoch"``
          (the pass after the epoch updates them, :meth:`refresh_state`).
        """
        x, y, eps = batch["image"], batch["label"], state["margins"]
        logits, _, stats = ctx.model.apply(params, batch_stats, x, train=True)
        correct = common.correct_fn(self.dice_threshold)(jax.lax.stop_gradient(logits), y)
        ce = common.cls_loss(self.cls_loss, logits, y)
        l0 = jnp.sum(jnp.where(correct, 0.0, ce))
        l1 = jnp.sum(jnp.where(correct, ce, 0.0))
        found = common.boundary_search(
            ctx, self, params, batch_stats, x, y, key, eps, logits,
            dice_threshold=self.dice_threshold,
        )  # fmt: skip
        use = correct & found.crossed
        logits_n, _, stats = ctx.model.apply(params, stats, found.images, train=True)
        l2 = jnp.sum(jnp.where(use, common.cls_loss(self.cls_loss, logits_n, y), 0.0))
        value = ((1.0 - self.beta) * (l0 + l1) + self.beta * l2) / x.shape[0]
        new = self._updated(eps, correct, found) if self.margin_update == "batch" else eps
        metrics = {
            "loss": value,
            "accuracy": jnp.mean(correct),
            "crossed": jnp.mean(use),
            "margin_mean": jnp.mean(new),
        }
        return value, LossOutput(metrics, stats, {"margins": new})

    def refresh_state(self, ctx, params, batch_stats, batch, state, key):
        """Alg. 2 for one batch with the model as it is now (``margin_update="epoch"``).

        The paper's timing: after each epoch, every training sample is classified by the
        updated model (misclassified: re-initialise to Δε), then BPGD inside its margin
        refines (crossed) or expands (not crossed) it. The classification and BPGD run
        in the attack's mode (eval mode unless ``attack_train_mode``).

        Returns:
          ``{"margins": [B]}`` in ``[delta, eps_max]``.
        """
        x, y, eps = batch["image"], batch["label"], state["margins"]
        f = common.attack_logits_fn(ctx.model, params, batch_stats, self.attack_train_mode)
        logits = f(x)
        correct = common.correct_fn(self.dice_threshold)(logits, y)
        found = common.boundary_search(
            ctx, self, params, batch_stats, x, y, key, eps, logits,
            dice_threshold=self.dice_threshold, logits_in_attack_mode=True,
        )  # fmt: skip
        return {"margins": self._updated(eps, correct, found)}

    def _updated(self, eps, correct, found):
        """Alg. 2's rules (:func:`arjax.margins.update`) on one BPGD result: ``[B]``."""
        return margins.update(
            eps,
            correct,
            found.crossed,
            found.distance,
            delta=self.delta,
            eps_max=self.eps_max,
            momentum=self.margin_momentum,
            reset_misclassified=self.reset_misclassified,
            shrink_misclassified=self.shrink_misclassified,
        )
