"""Mixed precision (``model.dtype="bfloat16"``, ``arjax.models.precision``)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

import arjax
from arjax import methods
from arjax.config_lib import ConfigError
from arjax.experiment.presets import method_config
from arjax.models import ConvSpec, ImaCNN, build_model, split_model
from arjax.training.state import create_train_state
from arjax.training.step import make_train_step

# A small IMA-style CNN: strided and stride-1 convolutions (both custom-VJP input
# gradients), instance norm, layer norm, a linear head.
_CONVS = (
    ConvSpec(1, 8, 3, 2, 1),
    ConvSpec(8, 16, 3, 2, 1, instance_norm=True),
    ConvSpec(16, 32, 3, 1, 0),
)
_SHAPE, _CLASSES, _EPS = (12, 12, 1), 4, 0.1


def _models():
    """``dtype -> (ModelFns, params, batch_stats)``: the same weights in both."""
    module = ImaCNN(_CONVS, _SHAPE, _CLASSES, rngs=nnx.Rngs(params=0))
    return {dtype: split_model(module, dtype=dtype) for dtype in ("float32", "bfloat16")}


def _batch(n=16):
    rng = np.random.default_rng(0)
    x = rng.random((n, *_SHAPE), np.float32)
    return jnp.asarray(x), jnp.asarray(rng.integers(0, _CLASSES, n), jnp.int32)


def test_bf16_keeps_float32_parameters_and_outputs_and_rounds_like_bf16():
    models = _models()
    (m32, p32, s32), (m16, p16, s16) = models["float32"], models["bfloat16"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(p16))
    x, _ = _batch()
    ref = m32.logits_fn(p32, s32)(x)
    low = m16.logits_fn(p16, s16)(x)
    assert low.dtype == jnp.float32
    rel = float(jnp.max(jnp.abs(low - ref)) / jnp.max(jnp.abs(ref)))
    # bf16 has an 8-bit mantissa (relative rounding 2^-9 = 2e-3 per op): visibly
    # different from float32, but close.
    assert 1e-5 < rel < 5e-2, rel


@pytest.mark.parametrize("attack", ["pgd", "bpgd"])
def test_bf16_attacks_stay_inside_the_ball_and_the_bounds(attack):
    model, params, stats = _models()["bfloat16"]
    x, _ = _batch()
    logits_fn = model.logits_fn(params, stats)
    y = jnp.argmax(logits_fn(x), -1)  # every sample classified right at x
    key, eps = jax.random.key(1), 0.2

    def run(x, y, key):
        if attack == "pgd":
            return arjax.attacks.pgd(logits_fn, x, y, key, eps=eps, num_steps=5), None
        radii = jnp.full((x.shape[0],), eps)
        found = arjax.attacks.bpgd(logits_fn, x, y, key, eps=radii, num_steps=5, num_bisections=4)
        return found.images, found.crossed

    x_adv, crossed = arjax.jit(run)(x, y, key)
    assert x_adv.dtype == jnp.float32
    dist = np.abs(np.asarray(x_adv - x)).reshape(x.shape[0], -1).max(1)
    assert dist.max() <= eps + 1e-6
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    if attack == "pgd":  # it attacks: every sample's loss grows
        ce = arjax.losses.classification_loss
        assert (np.asarray(ce(logits_fn(x_adv), y)) > np.asarray(ce(logits_fn(x), y))).all()
    else:  # samples that crossed moved, the others are x exactly
        crossed = np.asarray(crossed)
        assert crossed.any() and (dist[crossed] > 0).all() and (dist[~crossed] == 0).all()


def test_bf16_train_step_loss_within_2_percent_of_float32():
    x, y = _batch()
    batch = {"image": x, "label": y, "index": jnp.arange(x.shape[0], dtype=jnp.int32)}
    tx = optax.adam(1e-2)
    method = method_config("standard")
    losses, params_after = {}, {}
    for dtype, (model, params, stats) in _models().items():
        loss_fn = methods.make_loss(method, model, (0.0, 1.0))
        state = create_train_state(params, stats, tx, 0)
        step = arjax.jit(make_train_step(loss_fn, tx))
        for _ in range(3):
            state, metrics = step(state, batch)
            losses.setdefault(dtype, []).append(float(metrics["loss"]))
        params_after[dtype] = state.params
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params_after["bfloat16"]))
    assert losses["float32"][-1] < losses["float32"][0]  # the steps train
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=2e-2)


def test_unknown_dtype_names_the_field_and_choices():
    with pytest.raises(ConfigError, match="model.dtype 'float16'.*float32, bfloat16"):
        cfg = dict(name="ima_cnn", variant="fmnist", dtype="float16")
        build_model(ml_collections.ConfigDict(cfg), (28, 28, 1), 10, 0)
