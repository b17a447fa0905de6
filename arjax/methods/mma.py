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

from __future__ import annotations

import dataclasses

from arjax.lazy import lazy_module
from arjax.methods.base import (
    BoundarySearchMethod,
    LossOutput,
    check_range,
    register_method,
)

common = lazy_module("arjax.methods.common")
jax = lazy_module("jax")
jnp = lazy_module("jax.numpy")
losses = lazy_module("arjax.losses")

# eps_min = 0 means this fraction of d_max (the authors' code's mineps / hinge_maxeps).
EPS_MIN_FRACTION = 0.2


@register_method("mma")
@dataclasses.dataclass(frozen=True, kw_only=True)
class MMA(BoundarySearchMethod):
    """MMA loss ``c · mean CE(x) + (1 - c) · L^MMA`` (module docstring); margins in the state.

    Attributes:
      d_max: the hinge; samples whose margin reaches it get no adversarial loss.
      clean_loss_coeff: ``c``, the weight of the clean loss (0: "OMMA").
      eps_min: the margins' floor; 0 means ``EPS_MIN_FRACTION * d_max``.
      search_scale: the search ceiling ``search_scale * d_max`` (AN-PGD's extension).
      (and the BPGD fields of :class:`~arjax.methods.base.BoundarySearchMethod`, with
      MMA's defaults alpha 2.5, the logit-margin loss and the ``clean_to_last`` bracket)
    """

    d_max: float = 0.3
    clean_loss_coeff: float = 1.0 / 3.0
    eps_min: float = 0.0
    search_scale: float = 1.05
    alpha: float = 2.5
    attack_loss: str = "margin"
    bracket: str = "clean_to_last"

    def validate(self) -> None:
        """Checks every field (BPGD's too)."""
        super().validate()
        check_range(self, "d_max", 0.0, lo_open=True)
        check_range(self, "clean_loss_coeff", 0.0, 1.0)
        check_range(self, "search_scale", 1.0)
        check_range(self, "eps_min", 0.0, self.d_max)  # 0 means EPS_MIN_FRACTION * d_max

    @property
    def margin_range(self) -> tuple[float, float]:
        """``(eps_min, search_scale * d_max)``: the margins' floor (initial value), ceiling."""
        floor = self.eps_min or EPS_MIN_FRACTION * self.d_max
        return float(floor), float(self.search_scale * self.d_max)

    def loss(self, ctx, params, batch_stats, batch, state, key):
        """MMA loss and the batch's new margins.

        Args:
          ctx: the model and the data's bounds.
          params: model parameters.
          batch_stats: batch statistics.
          batch: ``image`` ``[B, ...]``, ``label`` ``[B]``.
          state: ``{"margins": [B]}``, the batch's previous margins.
          key: PRNG key for the PGD random start.

        Returns:
          ``(loss [], LossOutput(metrics, new_batch_stats, {"margins": [B]}))``.
        """
        x, y = batch["image"], batch["label"]
        floor, ceiling = self.margin_range
        radius = jnp.clip(state["margins"], floor, ceiling)
        logits, _, stats = ctx.model.apply(params, batch_stats, x, train=True)
        correct = losses.predictions_correct(jax.lax.stop_gradient(logits), y)
        clean = jnp.mean(common.cls_loss(self.cls_loss, logits, y))
        found = common.boundary_search(
            ctx, self, params, batch_stats, x, y, key, radius, logits, extend_to=ceiling
        )
        # One forward pass over the batch as MMA trains on it: x + δ* for correctly
        # classified samples whose search flipped them, x for the others (BPGD returns x).
        logits_m, _, stats = ctx.model.apply(params, stats, found.images, train=True)
        hinged = correct & found.crossed & (found.distance < self.d_max)
        weight = jnp.where(correct, hinged, True).astype(logits_m.dtype)
        mma = jnp.sum(weight * common.cls_loss(self.cls_loss, logits_m, y)) / x.shape[0]
        c = self.clean_loss_coeff
        value = c * clean + (1.0 - c) * mma
        estimate = jnp.where(found.crossed, found.distance, ceiling)
        new = jnp.clip(jnp.where(correct, estimate, floor), floor, ceiling)
        metrics = {
            "loss": value,
            "loss_clean": clean,
            "loss_mma": mma,
            "accuracy": jnp.mean(correct),
            "hinged": jnp.mean(hinged),
            "margin_mean": jnp.mean(new),
        }
        return value, LossOutput(metrics, stats, {"margins": new})
