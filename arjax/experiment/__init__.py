"""The experiment layer: configs to runs to reports (host code above the pure core).

Dependencies point one way: ``config_lib``/``types`` <- ``attacks``, ``losses``,
``models``, ``data``, ``parallel`` <- ``methods``, ``training`` (state, step,
optimiser, checkpoints, schedule) and ``evaluation`` (metrics, robustness,
interpretation, reports; never ``training``) <- ``experiment`` (presets, setup,
train, evaluate, compare, summary) <- the commands ``launch`` (``arjax-train``),
``evaluate`` (``arjax-evaluate``) and ``compare`` (``arjax-compare``).
"""

from arjax.experiment.presets import (
    base_config,
    ima_experiment_method,
    ima_image_config,
    lesion_smoke,
)

__all__ = ["base_config", "ima_experiment_method", "ima_image_config", "lesion_smoke"]
