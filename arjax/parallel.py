"""Data parallelism: a one-axis ``('data',)`` mesh, sharded batch, replicated state.

This is what ``jax.pmap`` is in current JAX: one program compiled with
``jax.jit`` for the global batch; XLA inserts the gradient all-reduce.
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
