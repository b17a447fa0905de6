"""The compiled data-parallel step: traces once, and all devices (8 fake CPUs) equal 1."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from helpers import STEP_MODEL
from helpers import compiled_step_setup as setup

from arjax import methods, parallel
from arjax.experiment.presets import method_config
from arjax.models import build_model
from arjax.training.state import create_train_state
from arjax.training.step import compile_multi_step

MODEL = ml_collections.ConfigDict(STEP_MODEL)

PGD = method_config("adversarial", r=0.5, attack="pgd", eps=0.1, num_steps=5)
IMA = method_config(  # the per-batch update (the pass: tests/methods/test_ima.py)
    "ima", eps_max=0.3, delta=0.01, num_steps=5, num_bisections=4, margin_update="batch"
)
MMA = method_config("mma", d_max=0.3, eps_min=0.01, num_steps=5, num_bisections=4)


@pytest.mark.parametrize("method", [PGD, IMA, MMA], ids=["pgd", "ima", "mma"])
def test_step_traces_once_across_calls_and_padding(method):
    state, step, batches, calls = setup(method, 8)
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


@pytest.mark.parametrize("method", [PGD, IMA, MMA], ids=["pgd", "ima", "mma"])
def test_every_device_equals_one_device(method):
    # Same init, same batches, same keys: after 6 adversarial steps the parameters (and
    # IMA margins) agree to float32 reduction-order noise. The suite's 8 fake CPU devices,
    # or the real device count where benchmarks/device_check.sh runs it (up to 8).
    results = []
    for n in (1, min(8, jax.device_count())):
        state, step, batches, _ = setup(method, n)
        for i in range(2):
            state, metrics = step(state, batches(3 * i), jnp.ones(3, bool))
        assert state.params["head"]["kernel"].value.sharding.num_devices == n
        results.append(
            jax.tree.map(np.asarray, (state.params, state.method_state, metrics["loss"]))
        )
    (p1, m1, l1), (p8, m8, l8) = results
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5), p1, p8)
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    if method.name in ("ima", "mma"):
        # 6 batches of 64 over 256 examples: every margin moved off its initial value
        # at least once, and both runs agree (bisection is discrete: allow 1e-4).
        m1, m8 = m1["margins"], m8["margins"]
        assert np.mean(m1 != 0.01) > 0.5
        np.testing.assert_allclose(m1, m8, atol=1e-4)
    # and training moved the parameters
    _, fresh, _ = build_model(MODEL, (2,), 2, seed=0)
    assert not np.allclose(p1["head"]["kernel"], np.asarray(fresh["head"]["kernel"].value))


def test_trainable_patterns_freeze_the_rest():
    from arjax.training import optim

    _, params, _ = build_model(MODEL, (2,), 2, seed=0)
    cfg = ml_collections.ConfigDict(
        dict(
            name="sgd",
            learning_rate=0.1,
            momentum=0.9,
            weight_decay=0.0,
            schedule="constant",
            warmup_steps=0,
            trainable=("head",),
        )
    )
    tx = optim.make_optimizer(cfg, 10, params)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    flat = {
        optim.param_path(p): np.asarray(u)
        for p, u in jax.tree_util.tree_flatten_with_path(updates)[0]
    }
    assert set(flat) >= {"head/kernel", "head/bias", "hidden/0/kernel"}
    for path, u in flat.items():
        assert np.all(u != 0) if path.startswith("head/") else np.all(u == 0), path
    cfg.trainable = ("classifer",)
    with pytest.raises(ValueError, match="'classifer' matches no parameter"):
        optim.make_optimizer(cfg, 10, params)


def test_batch_norm_statistics_update_inside_the_compiled_step():
    # Regression: BatchStat variables must be owned by the trace that updates them
    # (nnx.merge(copy=True)); the running mean then follows flax's momentum 0.99.
    from flax import nnx

    from arjax.models import split_model

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.bn = nnx.BatchNorm(3, rngs=rngs)
            self.head = nnx.Linear(3, 2, rngs=rngs)

        def __call__(self, x):
            h = self.bn(x)
            return self.head(h), h

    fns, params, stats = split_model(Net(nnx.Rngs(0)))
    tx = optax.sgd(0.1)
    step = compile_multi_step(
        methods.make_loss(method_config("standard"), fns, None), tx, parallel.make_mesh(1)
    )
    state = create_train_state(params, stats, tx, seed=0)
    x = np.tile(np.arange(3, dtype=np.float32), (2, 4, 1))  # [k=2, B=4, 3], column means 0, 1, 2
    batch = {"image": x, "label": np.zeros((2, 4), np.int32), "index": np.zeros((2, 4), np.int32)}
    state, _ = step(state, batch, jnp.ones(2, bool))
    np.testing.assert_allclose(
        state.batch_stats["bn"]["mean"][...], np.arange(3) * (1 - 0.99**2), rtol=1e-5
    )
