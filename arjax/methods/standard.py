"""Standard (clean) training: the mean classification loss.

With ``cls_loss="dice_ce"`` and a U-Net built with ``deep_supervision=True`` the loss is
nnU-Net's deep-supervision sum over the decoder's resolutions
(:func:`arjax.losses.deep_supervision_loss`).
"""

from __future__ import annotations

import dataclasses

from arjax.lazy import lazy_module
from arjax.methods.base import LossOutput, Method, register_method

common = lazy_module("arjax.methods.common")
losses = lazy_module("arjax.losses")


@register_method("standard")
@dataclasses.dataclass(frozen=True, kw_only=True)
class Standard(Method):
    """``mean_i L_cls(f(x_i), y_i)`` over the batch (fields: ``cls_loss``)."""

    def loss(self, ctx, params, batch_stats, batch, state, key):
        """The mean classification loss; ``key`` is unused (deterministic given the batch).

        Returns:
          ``(loss [], LossOutput(metrics, new_batch_stats))``.
        """
        del key, state
        x, y = batch["image"], batch["label"]
        logits, features, new_stats = ctx.model.apply(params, batch_stats, x, train=True)
        aux = features.get("deep_supervision") if isinstance(features, dict) else None
        if aux and self.cls_loss == "dice_ce":  # a U-Net with deep supervision
            value = common.mean(losses.deep_supervision_loss(logits, aux, y))
        else:
            value = common.mean(common.cls_loss(self.cls_loss, logits, y))
        return value, LossOutput({"loss": value, "accuracy": common.accuracy(logits, y)}, new_stats)
