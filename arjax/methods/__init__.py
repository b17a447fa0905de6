"""Training methods: frozen dataclasses of hyper-parameters with a pure loss.

Each method lives in its own module and registers itself (:func:`register_method`); a
run builds the one its config names with :func:`from_config`::

    method = arjax.methods.from_config(config.method, num_epochs=config.train.num_epochs)
    loss = arjax.methods.make_loss(method, model, bounds)
    value, out = loss(params, batch_stats, batch, state, key)

or, in a notebook, directly: ``arjax.methods.TRADES(beta=6.0, attack="pgd:linf:8/255:10:
loss=kl")``. Config files write a method's section with
``arjax.experiment.presets.method_config``. See :mod:`arjax.methods.base` for the loss
signature and the per-example state.

Importing this package does not import jax (config files load without it).
"""

from collections.abc import Callable
from typing import Any

from arjax.methods.adversarial import Adversarial, Noise
from arjax.methods.arfl import ARFL
from arjax.methods.base import (
    CLS_LOSSES,
    METHODS,
    AttackMethod,
    BoundarySearchMethod,
    Context,
    LossOutput,
    Method,
    register_method,
)
from arjax.methods.dsbn import DSBN
from arjax.methods.ima import IMA
from arjax.methods.mart import MART
from arjax.methods.mirst import MIRST
from arjax.methods.mma import MMA
from arjax.methods.sections import from_config
from arjax.methods.standard import Standard
from arjax.methods.trades import TRADES


def make_loss(
    method: Method, model, bounds: tuple[float, float] | None
) -> Callable[..., tuple[Any, LossOutput]]:
    """``loss(params, batch_stats, batch, state, key) -> (loss [], LossOutput)``.

    Args:
      method: a method object (or a ``method`` config section, read by :func:`from_config`).
      model: the model's pure functions (``arjax.models.ModelFns``).
      bounds: the inputs' valid range ``(lo, hi)``, or None.
    """
    if not isinstance(method, Method):
        method = from_config(method)
    return method.bind(model, bounds)


def __getattr__(name: str):
    """``arjax.methods.method_config`` (moved to ``arjax.experiment.presets``), warning.

    A config helper: this package reads no configs.
    """
    if name == "method_config":
        import importlib
        import warnings

        warnings.warn(
            "arjax.methods.method_config moved to arjax.experiment.presets.method_config",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module("arjax.experiment.presets").method_config
    raise AttributeError(f"module 'arjax.methods' has no attribute {name!r}")


__all__ = [
    "ARFL",
    "CLS_LOSSES",
    "DSBN",
    "IMA",
    "MART",
    "METHODS",
    "MIRST",
    "MMA",
    "TRADES",
    "Adversarial",
    "AttackMethod",
    "BoundarySearchMethod",
    "Context",
    "LossOutput",
    "Method",
    "Noise",
    "Standard",
    "from_config",
    "make_loss",
    "register_method",
]
