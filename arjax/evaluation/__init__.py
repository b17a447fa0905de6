"""Evaluation: robustness, AutoAttack, metrics, attribution maps and localisation, plots.

The public names below are the contract (README "The API in a notebook", DESIGN §8);
everything else is importable from its module (``arjax.evaluation.suite``,
``.report``, ``.localization``, ...). Nothing here imports ``arjax.training``.
"""

from arjax.evaluation.attribution import (
    ATTRIBUTIONS,
    attribution_map,
    integrated_gradients,
    occlusion,
    register_attribution,
    smooth_grad,
)
from arjax.evaluation.autoattack_eval import AutoAttackResult, autoattack
from arjax.evaluation.distances import (
    distance_curve,
    distance_summary,
    robust_accuracy_from_distances,
)
from arjax.evaluation.evaluators import EVALUATORS, Evaluator, register_evaluator
from arjax.evaluation.gradcam import grad_cam, grad_cam_pp
from arjax.evaluation.interpret import (
    class_activation_maps,
    model_saliency,
    saliency,
    save_box_grid,
    upsample_cam,
)
from arjax.evaluation.localization import localization_report, plot_localization
from arjax.evaluation.masking import masking_checks
from arjax.evaluation.metrics import (
    accuracy,
    mann_whitney_u,
    mean_std,
    roc_auc,
    roc_auc_per_class,
    sensitivity_specificity,
    youden_threshold,
)
from arjax.evaluation.report import (
    plot_accuracy_vs_eps,
    plot_decision_boundary,
    plot_histogram,
    plot_roc_curves,
    plot_training_curves,
)
from arjax.evaluation.robustness import (
    RobustCurve,
    adversarial_examples,
    robust_accuracy,
    robust_predictions,
)
from arjax.evaluation.surface_distance import hd95_per_class

__all__ = [
    "ATTRIBUTIONS",
    "EVALUATORS",
    "AutoAttackResult",
    "Evaluator",
    "RobustCurve",
    "accuracy",
    "adversarial_examples",
    "attribution_map",
    "autoattack",
    "class_activation_maps",
    "distance_curve",
    "distance_summary",
    "grad_cam",
    "grad_cam_pp",
    "hd95_per_class",
    "integrated_gradients",
    "localization_report",
    "mann_whitney_u",
    "masking_checks",
    "mean_std",
    "model_saliency",
    "occlusion",
    "plot_accuracy_vs_eps",
    "plot_decision_boundary",
    "plot_histogram",
    "plot_localization",
    "plot_roc_curves",
    "plot_training_curves",
    "register_attribution",
    "register_evaluator",
    "robust_accuracy",
    "robust_accuracy_from_distances",
    "robust_predictions",
    "roc_auc",
    "roc_auc_per_class",
    "saliency",
    "save_box_grid",
    "sensitivity_specificity",
    "smooth_grad",
    "upsample_cam",
    "youden_threshold",
]
