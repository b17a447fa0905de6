"""Weight averaging: the decay's warm-up values, a closed form, dtypes, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.training.ema import DEFAULT_DECAY, ema_decay, ema_init, ema_update


def test_decay_warm_up_values():
    # min(0.995, (1 + t) / (10 + t)) from the first update (t = 1)
    got = np.asarray([float(ema_decay(t)) for t in (1, 2, 10, 1789, 1790, 10**6)])
    np.testing.assert_allclose(got, [2 / 11, 3 / 12, 11 / 20, 1790 / 1799, 0.995, 0.995], rtol=1e-6)
    # the ramp reaches the decay at d = (10 decay - 1) / (1 - decay) = 1790 for 0.995
    assert float(ema_decay(1789)) < DEFAULT_DECAY == pytest.approx(float(ema_decay(1790)))
    # a warm-up of W updates: the average tracks the parameters until W, then ramps from 0.1
    got = [float(ema_decay(t, 0.9, warmup_steps=5)) for t in (1, 4, 5, 6, 100)]
    np.testing.assert_allclose(got, [0, 0, 0.1, 2 / 11, 0.9], rtol=1e-6)
    # no ramp: the constant decay from the warm-up on
    assert [float(ema_decay(t, 0.9, warmup_steps=2, ramp=False)) for t in (1, 2, 3)] == [
        0.0,
        pytest.approx(0.9),
        pytest.approx(0.9),
    ]
    with pytest.raises(ValueError, match="decay must lie in \\[0, 1\\)"):
        ema_decay(1, 1.0)


def test_update_matches_the_closed_form():
    # constant decay d: ema_T = d^T e_0 + (1 - d) sum_t d^(T - t) p_t
    rng = np.random.default_rng(0)
    ps = rng.normal(size=(6, 3)).astype(np.float32)
    e0 = rng.normal(size=3).astype(np.float32)
    d, ema = 0.8, {"w": jnp.asarray(e0)}
    for t in range(1, 7):
        ema = ema_update(ema, {"w": jnp.asarray(ps[t - 1])}, t, d, ramp=False)
    want = d**6 * e0 + (1 - d) * sum(d ** (6 - t) * ps[t - 1] for t in range(1, 7))
    np.testing.assert_allclose(np.asarray(ema["w"]), want, rtol=1e-5)
    # with the ramp and constant parameters p the gap shrinks by prod_t decay_t
    p, e = jnp.full((2,), 3.0), jnp.zeros((2,))
    ema = {"w": e}
    for t in range(1, 5):
        ema = ema_update(ema, {"w": p}, t)
    shrink = np.prod([(1 + t) / (10 + t) for t in range(1, 5)])
    np.testing.assert_allclose(np.asarray(ema["w"]), 3.0 * (1 - shrink), rtol=1e-6)


def test_dtypes_structure_and_jit():
    params = {"a": jnp.ones((2,), jnp.bfloat16), "b": {"c": jnp.full((3,), 2.0, jnp.float32)}}
    ema = ema_init(params)
    assert jax.tree.structure(ema) == jax.tree.structure(params)
    assert ema["b"]["c"] is not params["b"]["c"]  # a copy, not the same buffer
    new_params = jax.tree.map(lambda x: x * 3, params)
    traces = []

    @jax.jit
    def step(ema, params, t):
        traces.append(1)
        return ema_update(ema, params, t, 0.5, ramp=False)

    out = step(ema, new_params, 1)
    out = step(out, new_params, 2)
    assert len(traces) == 1  # the step is traced, not a static argument
    assert out["a"].dtype == jnp.bfloat16 and out["b"]["c"].dtype == jnp.float32
    # 2 -> 0.5 * 2 + 0.5 * 6 = 4 -> 0.5 * 4 + 0.5 * 6 = 5
    np.testing.assert_allclose(np.asarray(out["b"]["c"]), 5.0)
    np.testing.assert_allclose(np.asarray(out["a"], np.float32), 2.5)
    # before the warm-up ends the average equals the parameters exactly
    same = ema_update(ema, new_params, 3, warmup_steps=10)
    assert all(jax.tree.leaves(jax.tree.map(jnp.array_equal, same, new_params)))
