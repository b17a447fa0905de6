"""Evaluation: metrics, robustness, saliency/CAM maps, CAM localisation, reports (DESIGN §4, §6)."""

from arjax.evaluation.interpret import (
    class_activation_maps,
    clip_and_scale,
    saliency,
    save_grid,
    upsample_cam,
)
from arjax.evaluation.localization import (
    choose_threshold,
    iou,
    iou_curve,
    localization_report,
    localization_table,
    plot_localization,
)
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
    "choose_threshold",
    "class_activation_maps",
    "clip_and_scale",
    "format_mean_std",
    "iou",
    "iou_curve",
    "localization_report",
    "localization_table",
    "mann_whitney_u",
    "mean_std",
    "plot_accuracy_vs_eps",
    "plot_decision_boundary",
    "plot_histogram",
    "plot_localization",
    "plot_training_curves",
    "read_jsonl",
    "robust_accuracy",
    "robust_predictions",
    "roc_auc",
    "roc_auc_per_class",
    "saliency",
    "save_grid",
    "upsample_cam",
    "write_json",
]
