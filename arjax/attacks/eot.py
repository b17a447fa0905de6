"""Expectation over Transformation (EoT; Athalye et al. 2018, arXiv 1707.07397).

A randomised model (test-time dropout, random input transformations, noise injection)
has no single gradient; an attack on it should follow the expected gradient,
``E_r[grad L(f_r(x), y)]``, estimated by averaging ``n`` draws of the randomness at every
step (Athalye, Carlini & Wagner 2018, arXiv 1802.00420, "attacking randomized
classifiers"; AutoAttack's ``eot_iter``, 20 in its ``rand`` version).

In arjax a randomised model is a :class:`RandomizedModel`, ``fn(x, key) -> logits``, each
key one draw; a plain ``logits_fn(x)`` is deterministic. Attacks that support EoT (PGD,
APGD) take ``eot=n``; :func:`expectation` turns "what the attack computes from one
``logits_fn`` at ``z``" into its average over ``n`` draws at iteration ``i``, with the draw
keys ``fold_in(fold_in(fold_in(key, EOT_TAG), i), j)``, so a run is reproducible and every
step sees fresh randomness. On a deterministic ``logits_fn`` it is the plain computation
(``n`` identical draws average to the same gradient, so it is computed once), and with
``n = 1`` on a :class:`RandomizedModel` it is that draw's computation unchanged: EoT with
one sample is the plain attack exactly.

What is averaged is every output of the computation: the gradient, the objective values
and the logits, so an attack's "misclassified" test during the search reads the mean
logits of the draws (AutoAttack reads the last draw's). Decisions outside the search
(which examples an ensemble counts as broken) use one fixed draw, :func:`fixed_draw`, as a
single query of a randomised model would.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from arjax.types import Array, LogitsFn, PRNGKey

EOT_TAG = 0x0E07  # the fold_in tag of the model-randomness stream
JUDGE_TAG = 0x0E08  # ... and of the fixed draw that judges success


@dataclasses.dataclass(frozen=True)
class RandomizedModel:
    """A model with internal randomness: ``fn(x [B, ...], key) -> logits``.

    Frozen (hashable when ``fn`` is), so it can be a static jit argument like a
    ``logits_fn``. Each key is one draw of the randomness.

    Attributes:
      fn: ``(images, key) -> logits`` (``[B, K]``, ``[B]`` or ``[B, C]``).
    """

    fn: Callable[[Array, PRNGKey], Array]

    def draw(self, key: PRNGKey) -> LogitsFn:
        """The deterministic ``logits_fn`` of one draw."""
        return lambda x: self.fn(x, key)


def is_randomized(logits_fn: Any) -> bool:
    """Whether ``logits_fn`` is a :class:`RandomizedModel`."""
    return isinstance(logits_fn, RandomizedModel)


def check_eot(logits_fn: Any, key: PRNGKey | None, num_samples: int, name: str) -> None:
    """Validate an attack's EoT arguments.

    Raises:
      ValueError: ``num_samples`` not a python int ``>= 1``, or a randomised model without
        a PRNG key.
    """
    if not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
        raise ValueError(f"eot must be a python int >= 1; got {num_samples!r}.")
    if is_randomized(logits_fn) and key is None:
        raise ValueError(f"{name} on a RandomizedModel needs a PRNG key (its draws).")


def expectation(
    compute: Callable[[LogitsFn], Callable[[Array], Any]],
    logits_fn: LogitsFn | RandomizedModel,
    key: PRNGKey | None,
    num_samples: int,
) -> Callable[[Array, Array], Any]:
    """``(z, i) -> `` the mean over ``num_samples`` draws of ``compute(draw)(z)``.

    Args:
      compute: builds, from one deterministic ``logits_fn``, the function of the iterate
        the attack needs (e.g. ``z -> (grad, logits)``); its outputs are float pytrees.
      logits_fn: a deterministic ``logits_fn`` or a :class:`RandomizedModel`.
      key: PRNG key of the attack run (used for a :class:`RandomizedModel` only).
      num_samples: ``n >= 1`` (static).

    Returns:
      ``(z, i) -> outputs``: the plain ``compute(logits_fn)(z)`` for a deterministic
      model; else the average over draws ``j < n`` keyed by iteration ``i`` (an int,
      may be traced).
    """
    if not is_randomized(logits_fn):
        plain = compute(logits_fn)
        return lambda z, i: plain(z)
    base = jax.random.fold_in(key, EOT_TAG)

    def at(z: Array, i: Array) -> Any:
        step_key = jax.random.fold_in(base, i)

        def one(j):
            return compute(logits_fn.draw(jax.random.fold_in(step_key, j)))(z)

        first = one(0)
        if num_samples == 1:
            return first
        total = lax.fori_loop(
            1, num_samples, lambda j, acc: jax.tree.map(jnp.add, acc, one(j)), first
        )
        return jax.tree.map(lambda t: t / num_samples, total)

    return at


def fixed_draw(logits_fn: LogitsFn | RandomizedModel, key: PRNGKey | None) -> LogitsFn:
    """One deterministic view of the model: itself, or one draw keyed by ``key``."""
    if not is_randomized(logits_fn):
        return logits_fn
    return logits_fn.draw(jax.random.fold_in(key, JUDGE_TAG))
