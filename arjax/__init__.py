"""arjax: adversarially robust training and evaluation of image classifiers in JAX.

Public API (DESIGN §8)::

    import arjax
    x_adv = arjax.attacks.pgd(logits_fn, x, y, key, eps=0.03, num_steps=20)
    arjax.losses.arfl_robust(features, y_pm1)
    curve = arjax.evaluation.robust_accuracy(logits_fn, x, y, key, eps=(0.0, 0.1))
    attack = arjax.jit(lambda x, y, key: arjax.attacks.pgd(logits_fn, x, y, key, eps=0.03))
    # arjax.jit: jax.jit plus arjax's XLA options for the CPU backend (arjax.compilation).
"""

from arjax import attacks, evaluation, losses, methods, models
from arjax.compilation import compiler_options, jit
from arjax.config_lib import ConfigError
from arjax.experiment.presets import base_config

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "attacks",
    "base_config",
    "compiler_options",
    "evaluation",
    "jit",
    "losses",
    "methods",
    "models",
]
