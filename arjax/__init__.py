"""arjax: adversarially robust training and evaluation of image classifiers in JAX.

Public API (DESIGN §8)::

    import arjax
    x_adv = arjax.attacks.pgd(logits_fn, x, y, key, eps=0.03, num_steps=20)
    arjax.losses.arfl_robust(features, y_pm1)
    curve = arjax.evaluation.robust_accuracy(logits_fn, x, y, key, eps=(0.0, 0.1))
    attack = arjax.jit(lambda x, y, key: arjax.attacks.pgd(logits_fn, x, y, key, eps=0.03))
    # arjax.jit: jax.jit plus arjax's XLA options for the CPU backend (arjax.compilation).
    run = arjax.load_run("runs/quickstart")  # config, data, method, model, restored state
"""

import importlib

from arjax.config_lib import ConfigError

__version__ = "0.1.0"

# Imported on first use (PEP 562), so that ``arjax-train``'s argument and config
# checks answer in about a second instead of waiting for sklearn and the attack zoo.
_LAZY = {
    "attacks": ("arjax.attacks", None),
    "evaluation": ("arjax.evaluation", None),
    "losses": ("arjax.losses", None),
    "methods": ("arjax.methods", None),
    "models": ("arjax.models", None),
    "compiler_options": ("arjax.compilation", "compiler_options"),
    "jit": ("arjax.compilation", "jit"),
    "base_config": ("arjax.experiment.presets", "base_config"),
    "load_run": ("arjax.experiment.runs", "load_run"),
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'arjax' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "ConfigError",
    "attacks",
    "base_config",
    "compiler_options",
    "evaluation",
    "jit",
    "load_run",
    "losses",
    "methods",
    "models",
]
