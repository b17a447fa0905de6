"""Training methods, each a pure loss selected by ``config.method.name``.

A method loss has the signature
``loss(ctx, params, batch_stats, batch, key) -> (loss [], (metrics, new_batch_stats))``.
"""

import dataclasses
import functools
from collections.abc import Callable

import ml_collections

from arjax.config_lib import check_choice
from arjax.methods import adversarial, arfl, ima, mart, standard, trades
from arjax.methods.context import MethodContext
from arjax.models import ModelFns


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method: its loss, default fields and validator."""

    loss: Callable
    defaults: Callable[[], dict]
    validate: Callable[[ml_collections.ConfigDict], None]
    # Fills derived fields (e.g. IMA's delta from the epoch count) before validation.
    resolve: Callable[[ml_collections.ConfigDict], None] | None = None
    # Keeps a per-example margin table in the TrainState (IMA).
    uses_margins: bool = False


METHODS: dict[str, Method] = {
    "standard": Method(standard.loss, standard.defaults, standard.validate),
    "adversarial": Method(adversarial.loss, adversarial.defaults, adversarial.validate),
    "noise": Method(adversarial.noise_loss, adversarial.noise_defaults, adversarial.validate_noise),
    "arfl": Method(arfl.loss, arfl.defaults, arfl.validate),
    "ima": Method(ima.loss, ima.defaults, ima.validate, ima.resolve, uses_margins=True),
    "trades": Method(trades.loss, trades.defaults, trades.validate),
    "mart": Method(mart.loss, mart.defaults, mart.validate),
}


def method_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """A ``method`` config section: the method's defaults updated by ``overrides``."""
    if name not in METHODS:
        raise ValueError(f"unknown method.name {name!r}; valid choices: {', '.join(METHODS)}")
    fields = METHODS[name].defaults()
    unknown = set(overrides) - set(fields)
    if unknown:
        raise ValueError(
            f"unknown method.{sorted(unknown)[0]} for method {name!r}; valid: {sorted(fields)}"
        )
    fields.update(overrides)
    return ml_collections.ConfigDict(fields)


def resolve(cfg: ml_collections.ConfigDict) -> None:
    """Fills the method's derived fields in place (no-op for most methods)."""
    name = check_choice(cfg, "method.name", METHODS)
    if METHODS[name].resolve is not None:
        METHODS[name].resolve(cfg)


def validate(cfg: ml_collections.ConfigDict) -> None:
    """Checks ``method.name`` and the method's own fields."""
    name = check_choice(cfg, "method.name", METHODS)
    METHODS[name].validate(cfg)


def make_loss(
    cfg: ml_collections.ConfigDict, model: ModelFns, bounds: tuple[float, float] | None
) -> Callable:
    """The configured method's loss with its context bound.

    Returns:
      ``loss(params, batch_stats, batch, key) -> (loss, (metrics, new_batch_stats))``.
    """
    ctx = MethodContext(model=model, cfg=cfg, bounds=bounds)
    return functools.partial(METHODS[cfg.name].loss, ctx)


__all__ = [
    "METHODS",
    "Method",
    "MethodContext",
    "make_loss",
    "method_config",
    "resolve",
    "validate",
]
