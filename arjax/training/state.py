"""The one pytree that carries everything a training step changes (DESIGN §3.3)."""

import dataclasses
from collections.abc import Callable

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
      method_state: the method's per-example state (``Method.init_state``: every leaf
        ``[N_train, ...]``, e.g. IMA's ``{"margins": [N]}``), or None for a stateless
        method. Replicated; a step gathers and scatters the batch's rows.
      rng: base PRNG key; a step derives ``fold_in(rng, step)`` and never
        stores a new key.
    """

    step: Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    method_state: PyTree | None
    rng: PRNGKey


def create_train_state(
    params: PyTree,
    batch_stats: PyTree,
    tx: optax.GradientTransformation,
    seed: int,
    method_state: PyTree | None = None,
) -> TrainState:
    """Initial state: step 0, fresh optimiser state, base key from ``seed``."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=batch_stats,
        opt_state=tx.init(params),
        method_state=method_state,
        rng=jax.random.key_data(jax.random.key(seed)),
    )


def step_key(state: TrainState) -> PRNGKey:
    """The step's key: ``fold_in(base, step)`` (raw uint32 key data in the state)."""
    return jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)


def gather_rows(method_state: PyTree | None, index: Array) -> PyTree | None:
    """The batch's rows ``[B, ...]`` of every leaf of a per-example state, by ``index`` [B]."""
    if method_state is None:
        return None
    return jax.tree.map(lambda table: table[index], method_state)


def scatter_rows(
    method_state: PyTree | None, index: Array, rows: PyTree | None, valid: Array | None = None
) -> PyTree | None:
    """A new per-example state with ``rows`` written at ``index``; other rows unchanged.

    Indices within one batch are distinct (batches are slices of a permutation), except
    padding rows, which ``valid`` (bool ``[B]``, None: all rows real) drops.
    """
    if method_state is None:
        return None

    def put(table, new):
        where = index if valid is None else jnp.where(valid, index, table.shape[0])
        return table.at[where].set(new.astype(table.dtype), mode="drop")  # out of range: dropped

    return jax.tree.map(put, method_state, rows)


# Fields of older TrainStates: name -> (today's field, old value -> today's, today's -> old).
RENAMED_FIELDS: dict[str, tuple[str, Callable, Callable]] = {
    # before methods kept an explicit state (issue 29): IMA/MMA's margin table itself
    "margins": (
        "method_state",
        lambda table: None if table is None else {"margins": table},
        lambda state: None if state is None else state["margins"],
    ),
}


def saved_layout(like: TrainState, saved: set[str] | None) -> tuple[PyTree, Callable]:
    """What to restore a checkpoint saved with fields ``saved`` into, and how to read it.

    A checkpoint written by older code has older field names (``RENAMED_FIELDS``) and
    lacks fields added since (they keep ``like``'s value). Restoring into this layout
    and calling the returned function gives today's :class:`TrainState`.

    Args:
      like: a state of today's layout (shapes, dtypes, shardings).
      saved: the field names of the saved tree, or None when unknown (today's assumed).

    Returns:
      ``(target, rebuild)``: the pytree to restore into, and ``rebuild(restored) ->
      TrainState``.
    """
    fields = [f.name for f in dataclasses.fields(TrainState)]
    if saved is None or set(saved) == set(fields):
        return like, lambda restored: restored
    renamed = {new: old for old, (new, _, _) in RENAMED_FIELDS.items() if old in saved}
    target = {}
    for name in fields:
        if name in renamed:
            old = renamed[name]
            target[old] = RENAMED_FIELDS[old][2](getattr(like, name))
        elif name in saved:
            target[name] = getattr(like, name)

    def rebuild(restored: dict) -> TrainState:
        values = {}
        for name in fields:
            if name in renamed:
                values[name] = RENAMED_FIELDS[renamed[name]][1](restored[renamed[name]])
            else:
                values[name] = restored[name] if name in restored else getattr(like, name)
        return TrainState(**values)

    return target, rebuild
