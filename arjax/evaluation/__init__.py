"""Evaluation: metrics, robust accuracy curves and report files (DESIGN §4.3, §6, §8)."""

from arjax.evaluation.metrics import (
    accuracy,
    aggregate,
    binary_scores,
    format_mean_std,
    mann_whitney_u,
    mean_std,
    roc_auc,
    roc_auc_per_class,
)
from arjax.evaluation.report import (
    plot_accuracy_vs_eps,
    plot_decision_boundary,
    plot_histogram,
    plot_training_curves,
    read_jsonl,
    write_json,
)
from arjax.evaluation.robustness import (
    LOSS_TAGS,
    RobustCurve,
    RobustPredictions,
    adversarial_examples,
    robust_accuracy,
    robust_predictions,
)

__all__ = [
    "LOSS_TAGS",
    "RobustCurve",
    "RobustPredictions",
    "accuracy",
    "adversarial_examples",
    "aggregate",
    "binary_scores",
    "format_mean_std",
    "mann_whitney_u",
    "mean_std",
    "plot_accuracy_vs_eps",
    "plot_decision_boundary",
    "plot_histogram",
    "plot_training_curves",
    "read_jsonl",
    "robust_accuracy",
    "robust_predictions",
    "roc_auc",
    "roc_auc_per_class",
    "write_json",
]
