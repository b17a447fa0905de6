"""Per-example losses, reduced by the caller (DESIGN §3.5)."""

from arjax.losses.arfl import arfl_robust, labels_to_pm1
from arjax.losses.classification import (
    HEAD_KINDS,
    classification_loss,
    head_kind,
    predictions_correct,
    sigmoid_binary_cross_entropy,
    softmax_cross_entropy,
    weighted_bce,
)
from arjax.losses.segmentation import (
    DICE_THRESHOLD,
    adi,
    deep_supervision_loss,
    dice_ce_loss,
    dice_score,
    hard_dice,
    segmentation_correct,
    soft_dice,
    tvdi,
)

__all__ = [
    "DICE_THRESHOLD",
    "HEAD_KINDS",
    "adi",
    "deep_supervision_loss",
    "dice_ce_loss",
    "dice_score",
    "hard_dice",
    "segmentation_correct",
    "soft_dice",
    "tvdi",
    "arfl_robust",
    "classification_loss",
    "head_kind",
    "labels_to_pm1",
    "predictions_correct",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
    "weighted_bce",
]
