"""The per-example method state of the TrainState: rows gathered and scattered by index."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.training.state import gather_rows, scatter_rows

DELTA = 0.01


def test_scatter_touches_only_the_batch_indices():
    table = {"margins": jnp.full((100,), DELTA, jnp.float32)}
    index = jnp.array([3, 97, 42, 0])
    values = {"margins": jnp.array([0.2, 0.3, 0.15, 0.05])}
    new = jax.jit(scatter_rows)(table, index, values)
    changed = np.flatnonzero(np.asarray(new["margins"]) != np.asarray(table["margins"]))
    assert sorted(changed.tolist()) == [0, 3, 42, 97]
    np.testing.assert_allclose(gather_rows(new, index)["margins"], values["margins"])
    assert new["margins"].dtype == jnp.float32
    valid = jnp.array([True, False, True, True])  # a padding row writes nothing
    padded = scatter_rows(table, index, values, valid)["margins"]
    assert float(padded[97]) == pytest.approx(DELTA) and float(padded[3]) == pytest.approx(0.2)
    assert gather_rows(None, index) is None and scatter_rows(None, index, None) is None
