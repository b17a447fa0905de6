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

__all__ = [
    "HEAD_KINDS",
    "arfl_robust",
    "classification_loss",
    "head_kind",
    "labels_to_pm1",
    "predictions_correct",
    "sigmoid_binary_cross_entropy",
    "softmax_cross_entropy",
    "weighted_bce",
]
