"""Data parallelism: a one-axis ``('data',)`` mesh, sharded batch, replicated state.

This is what ``jax.pmap`` is in current JAX: one program compiled with
``jax.jit`` for the global batch; XLA inserts the gradient all-reduce.

In a multi-process run (:mod:`arjax.distributed`) :func:`make_mesh` spans the
devices of every process (``jax.devices()`` is global) and each process puts its
own rows of a batch (:func:`put_batch`). Evaluation runs per process on
:func:`local_mesh` (every process computes the same numbers on its own devices,
so no result needs gathering across hosts); :func:`localize` moves a replicated
state there.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from arjax.types import PyTree


def make_mesh(num_devices: int | None = None) -> Mesh:
    """A ``('data',)`` mesh over the first ``num_devices`` devices (all by default)."""
    devices = jax.devices()
    n = len(devices) if num_devices in (None, 0) else num_devices
    if n > len(devices):
        raise ValueError(f"train.num_devices={n} but only {len(devices)} devices are visible")
    return Mesh(np.asarray(devices[:n]), ("data",))


def batch_sharding(mesh: Mesh, leading_axes: int = 1) -> NamedSharding:
    """Shards axis ``leading_axes - 1`` (the batch axis) over ``'data'``.

    ``leading_axes=2`` is for stacked batches ``[steps, B, ...]``.
    """
    spec = (None,) * (leading_axes - 1) + ("data",)
    return NamedSharding(mesh, PartitionSpec(*spec))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, PartitionSpec())


def put_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> PyTree:
    """Host batch (this process's rows) -> global ``jax.Array`` sharded over ``'data'``."""
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), batch
    )


def put_replicated(tree: PyTree, mesh: Mesh) -> PyTree:
    """Places a pytree on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def put_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> PyTree:
    """Host batch that every process holds whole -> global ``jax.Array`` sharded over ``'data'``.

    Unlike :func:`put_batch` (each process its own rows), every process passes the
    same full ``[B, ...]`` arrays and keeps the rows of its devices.
    """
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a), np.shape(a)),
        batch,
    )


def local_mesh() -> Mesh:
    """A ``('data',)`` mesh over this process's devices (all devices in one process)."""
    return Mesh(np.asarray(jax.local_devices()), ("data",))


def evaluation_mesh(mesh: Mesh) -> Mesh:
    """Where a process evaluates: ``mesh`` in one process, else :func:`local_mesh`."""
    return mesh if jax.process_count() == 1 else local_mesh()


def localize(tree: PyTree, mesh: Mesh) -> PyTree:
    """A replicated pytree (possibly spanning processes) replicated on ``mesh`` instead.

    Leaves already on ``mesh``'s devices are returned as they are; others are
    copied from this process's first replica.
    """
    target = replicated(mesh)

    def move(leaf):
        if not isinstance(leaf, jax.Array) or leaf.sharding.device_set == target.device_set:
            return leaf
        return jax.device_put(leaf.addressable_data(0), target)

    return jax.tree.map(move, tree)
