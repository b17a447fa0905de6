"""Training methods, each a pure loss selected by ``config.method.name``.

A method loss has the signature
``loss(ctx, params, batch_stats, batch, key) -> (loss [], (metrics, new_batch_stats))``.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Protocol

import ml_collections

from arjax.config_lib import check_choice
from arjax.methods import adversarial, arfl, dsbn, ima, mart, mirst, mma, standard, trades
from arjax.methods.context import MethodContext
from arjax.models import ModelFns
from arjax.types import Array, Batch, Metrics, PRNGKey, PyTree


class MethodLoss(Protocol):
    """The interface every training method implements (DESIGN §3.5).

    Pure and jittable; the method weights and reduces per-example values exactly as
    its paper writes them.
    """

    def __call__(
        self,
        ctx: MethodContext,
        params: PyTree,
        batch_stats: PyTree,
        batch: Batch,
        key: PRNGKey,
    ) -> tuple[Array, tuple[Metrics, PyTree]]:
        """Returns ``(loss [], (metrics {name: []}, new_batch_stats))`` for one batch.

        ``batch`` holds ``image`` ``[B, ...]``, ``label`` ``[B]`` / ``[B, C]``, ``index``
        ``[B]`` (and IMA's ``margin`` / ``mask``); ``key`` is this step's PRNG key.
        """
        ...


class BoundLoss(Protocol):
    """A :class:`MethodLoss` with its context bound (what the compiled step calls)."""

    def __call__(
        self, params: PyTree, batch_stats: PyTree, batch: Batch, key: PRNGKey
    ) -> tuple[Array, tuple[Metrics, PyTree]]:
        """Returns ``(loss [], (metrics, new_batch_stats))``."""
        ...


@dataclasses.dataclass(frozen=True)
class Method:
    """A registered method: its loss, default fields and validator."""

    loss: MethodLoss
    defaults: Callable[[], dict]
    validate: Callable[[ml_collections.ConfigDict], None]
    # Fills derived fields (e.g. IMA's delta from the epoch count) before validation.
    resolve: Callable[[ml_collections.ConfigDict], None] | None = None
    # Keeps a per-example margin table in the TrainState (IMA, MMA).
    uses_margins: bool = False
    # (floor, ceiling) of that table from the method section: the initial value and the
    # clip range of its updates; None means IMA's (delta, eps_max).
    margin_range: Callable[[ml_collections.ConfigDict], tuple[float, float]] | None = None
    # Alg. 2 for one batch, for the pass after each epoch (IMA's margin_update="epoch").
    estimate_margins: Callable | None = None

    def table_range(self, method: ml_collections.ConfigDict) -> tuple[float, float]:
        """``(floor, ceiling)`` of the margin table for the ``method`` section."""
        if self.margin_range is not None:
            return self.margin_range(method)
        return float(method.delta), float(method.eps_max)


METHODS: dict[str, Method] = {
    "standard": Method(standard.loss, standard.defaults, standard.validate),
    "adversarial": Method(adversarial.loss, adversarial.defaults, adversarial.validate),
    "noise": Method(adversarial.noise_loss, adversarial.noise_defaults, adversarial.validate_noise),
    "arfl": Method(arfl.loss, arfl.defaults, arfl.validate),
    "ima": Method(
        ima.loss,
        ima.defaults,
        ima.validate,
        ima.resolve,
        uses_margins=True,
        estimate_margins=ima.estimate_margins,
    ),
    "trades": Method(trades.loss, trades.defaults, trades.validate),
    "mart": Method(mart.loss, mart.defaults, mart.validate),
    "dsbn": Method(dsbn.loss, dsbn.defaults, dsbn.validate),
    "mirst": Method(mirst.loss, mirst.defaults, mirst.validate),
    "mma": Method(
        mma.loss, mma.defaults, mma.validate, uses_margins=True, margin_range=mma.margin_range
    ),
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
) -> BoundLoss:
    """The configured method's loss with its context bound.

    Returns:
      ``loss(params, batch_stats, batch, key) -> (loss, (metrics, new_batch_stats))``.
    """
    ctx = MethodContext(model=model, cfg=cfg, bounds=bounds)
    return functools.partial(METHODS[cfg.name].loss, ctx)


def make_margin_estimate(
    cfg: ml_collections.ConfigDict, model: ModelFns, bounds: tuple[float, float] | None
) -> Callable | None:
    """The method's margin estimate for the pass after each epoch, with its context bound.

    Returns:
      ``estimate(params, batch_stats, batch, key) -> margins [B]``, or None when the
      method keeps no margins or updates them per batch (``margin_update="batch"``).
    """
    estimate = METHODS[cfg.name].estimate_margins
    if estimate is None or cfg.get("margin_update", "batch") != "epoch":
        return None
    return functools.partial(estimate, MethodContext(model=model, cfg=cfg, bounds=bounds))


__all__ = [
    "BoundLoss",
    "MethodLoss",
    "METHODS",
    "Method",
    "MethodContext",
    "make_loss",
    "make_margin_estimate",
    "method_config",
    "resolve",
    "validate",
]
