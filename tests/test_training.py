"""The compiled data-parallel step: traces once, and 8 devices equal 1 device."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from arjax import methods
from arjax.data import moons_splits, train_dataset
from arjax.models import build_model
from arjax.training import parallel
from arjax.training.state import create_train_state
from arjax.training.step import compile_multi_step

MODEL = ml_collections.ConfigDict(
    dict(name="mlp", hidden=(16, 16), activation="leaky_relu", layer_norm=True, num_outputs=2)
)


def setup(method, num_devices, k=3):
    data = moons_splits({"train": 256}, 0.2, 0)["train"]
    model, params, stats = build_model(MODEL, (2,), 2, seed=0)
    tx = optax.adam(1e-2)
    mesh = parallel.make_mesh(num_devices)
    state = parallel.put_replicated(create_train_state(params, stats, tx, seed=0), mesh)
    calls = {"traces": 0}
    loss = methods.make_loss(method, model, None)

    def counting_loss(*args):
        calls["traces"] += 1
        return loss(*args)

    step = compile_multi_step(counting_loss, tx, mesh)
    ds = train_dataset(data, batch_size=64, seed=0)
    sharding = parallel.batch_sharding(mesh, leading_axes=2)

    def batches(start):
        host = [ds[s] for s in range(start, start + k)]
        return parallel.put_batch(jax.tree.map(lambda *a: np.stack(a), *host), sharding)

    return state, step, batches, calls


PGD = methods.method_config("adversarial", r=0.5, attack="pgd", eps=0.1, num_steps=5)


def test_step_traces_once_across_calls_and_padding():
    state, step, batches, calls = setup(PGD, 8)
    for i in range(4):
        valid = np.arange(3) < (3 if i < 3 else 1)  # the last call is padded
        state, metrics = step(state, batches(3 * i), jnp.asarray(valid))
    assert int(state.step) == 10
    # One trace of the loss under value_and_grad inside the scan body.
    assert calls["traces"] == 1
    assert step._cache_size() == 1


def test_padded_steps_leave_state_unchanged():
    state, step, batches, _ = setup(PGD, 1)
    before = jax.tree.map(np.asarray, state)
    after, _ = step(state, batches(0), jnp.zeros(3, bool))
    jax.tree.map(np.testing.assert_array_equal, before, jax.tree.map(np.asarray, after))


def test_eight_devices_equal_one_device():
    # Same init, same batches, same keys: after 6 PGD-adversarial steps the
    # parameters agree to float32 reduction-order noise (atol 1e-5).
    results = []
    for n in (1, 8):
        state, step, batches, _ = setup(PGD, n)
        for i in range(2):
            state, metrics = step(state, batches(3 * i), jnp.ones(3, bool))
        assert state.params["head"]["kernel"].value.sharding.num_devices == n
        results.append((jax.tree.map(np.asarray, state.params), np.asarray(metrics["loss"])))
    (p1, l1), (p8, l8) = results
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), p1, p8)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    # and training moved the parameters
    _, fresh, _ = build_model(MODEL, (2,), 2, seed=0)
    assert not np.allclose(p1["head"]["kernel"], np.asarray(fresh["head"]["kernel"].value))
