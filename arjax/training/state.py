"""The one pytree that carries everything a training step changes (DESIGN §3.3)."""

import jax
import jax.numpy as jnp
import optax
from flax import struct

from arjax.types import Array, PRNGKey, PyTree


@struct.dataclass
class TrainState:
    """Training state; a step maps one ``TrainState`` to the next.

    Attributes:
      step: int32 ``[]``, number of optimiser updates done.
      params: model parameters (``nnx.State``).
      batch_stats: running batch statistics (``nnx.State``, possibly empty).
      opt_state: optax optimiser state.
      margins: float32 ``[N_train]`` per-example state (IMA margins), or
        None for methods that keep none.
      rng: base PRNG key; a step derives ``fold_in(rng, step)`` and never
        stores a new key.
    """

    step: Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    margins: Array | None
    rng: PRNGKey


def create_train_state(
    params: PyTree,
    batch_stats: PyTree,
    tx: optax.GradientTransformation,
    seed: int,
    margins: Array | None = None,
) -> TrainState:
    """Initial state: step 0, fresh optimiser state, base key from ``seed``."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        margins=margins,
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def step_key(state: TrainState) -> PRNGKey:
    """The step's key: ``fold_in(base, step)`` (raw uint32 key data in the state)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
