"""Keeping, per example, the first input that fools the model: restarts and ensembles.

An attack with restarts, and an ensemble of attacks (AutoAttack), keep for each example
the first candidate that flips its prediction and the example's current input where none
does, so a later, weaker candidate never undoes an earlier success.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from arjax.losses.classification import predictions_correct
from arjax.types import Array, LogitsFn


def take_where_broken(
    logits_fn: LogitsFn, x_adv: Array, robust: Array, candidate: Array, y: Array
) -> tuple[Array, Array]:
    """Takes ``candidate`` for the examples it breaks among those still ``robust``.

    Args:
      logits_fn: inputs -> logits.
      x_adv: ``[B, ...]`` current adversarial inputs.
      robust: bool ``[B]``, still correctly classified so far.
      candidate: ``[B, ...]`` the next attack's output.
      y: labels ``[B]`` or ``[B, C]``.

    Returns:
      ``(x_adv, robust)`` updated.
    """
    broken = robust & ~predictions_correct(logits_fn(candidate), y)
    x_adv = jnp.where(broken.reshape((-1,) + (1,) * (x_adv.ndim - 1)), candidate, x_adv)
    return x_adv, robust & ~broken


def worst_of_restarts(one: Callable, logits_fn: LogitsFn, x, y, key, restarts: int):
    """Runs ``one(key_r)`` per restart and keeps, per sample, the first that fools the model."""
    best = one(jax.random.fold_in(key, 0))
    robust = predictions_correct(logits_fn(best), y)
    for r in range(1, restarts):
        best, robust = take_where_broken(
            logits_fn, best, robust, one(jax.random.fold_in(key, r)), y
        )
    return best
