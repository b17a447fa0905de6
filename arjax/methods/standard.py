"""Standard (clean) training: the mean classification loss.

With ``cls_loss="dice_ce"`` and a U-Net built with ``deep_supervision=True`` the loss is
nnU-Net's deep-supervision sum over the decoder's resolutions
(:func:`arjax.losses.deep_supervision_loss`).
"""

import ml_collections

from arjax import losses
from arjax.methods.context import MethodContext, accuracy, mean, validate_common


def loss(ctx: MethodContext, params, batch_stats, batch, key):
    """``mean_i L_cls(f(x_i), y_i)`` over the batch.

    Args:
      ctx: method context.
      params: model parameters.
      batch_stats: batch statistics.
      batch: ``{"image": [B, ...], "label": [B] | [B, C]}``.
      key: unused (standard training is deterministic given the batch).

    Returns:
      ``(loss [], (metrics, new_batch_stats))``.
    """
    del key
    logits, features, new_stats = ctx.model.apply(params, batch_stats, batch["image"], train=True)
    aux = features.get("deep_supervision") if isinstance(features, dict) else None
    if aux and ctx.cfg.get("cls_loss", "ce") == "dice_ce":  # a U-Net with deep supervision
        value = mean(losses.deep_supervision_loss(logits, aux, batch["label"]))
    else:
        value = mean(ctx.cls_loss(logits, batch["label"]))
    return value, ({"loss": value, "accuracy": accuracy(logits, batch["label"])}, new_stats)


def defaults() -> dict:
    """Default ``method`` fields."""
    return dict(name="standard", cls_loss="ce")


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``method.*`` fields."""
    validate_common(cfg)
