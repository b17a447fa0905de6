"""Bring-your-own model: a user's NNX module or apply function through arjax (issue 18).

Each defect the issue lists is reproduced with a user-style model (plain logits,
batch norm left in NNX's default train mode, dropout) and must now be a working
call or one clear error.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import arjax
from arjax import methods, parallel
from arjax.evaluation.attack_curve import attack_predictions
from arjax.experiment.presets import method_config
from arjax.models import adapt, split_model
from arjax.training.checkpoint import Checkpointer
from arjax.training.state import create_train_state
from arjax.training.step import compile_multi_step, make_train_step


class UserNet(nnx.Module):
    """A notebook user's net: Linear -> BatchNorm -> relu -> Dropout -> Linear, plain logits."""

    def __init__(self, *, dropout: float = 0.0, batch_norm: bool = True, seed: int = 0):
        rngs = nnx.Rngs(params=seed, dropout=seed + 1)
        self.hidden = nnx.Linear(2, 16, rngs=rngs)
        self.norm = nnx.BatchNorm(16, rngs=rngs) if batch_norm else None
        self.drop = nnx.Dropout(dropout, rngs=rngs) if dropout else None
        self.out = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x):
        h = self.hidden(x)
        if self.norm is not None:
            h = self.norm(h)
        h = jax.nn.relu(h)
        if self.drop is not None:
            h = self.drop(h)
        return self.out(h)


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (n, 2)).astype(np.float32)
    y = rng.integers(0, 3, n).astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


def _dropout_count(stats) -> int:
    """The dropout stream's counter in a model-state pytree (how many masks were drawn)."""
    counts = [v for path, v in nnx.to_flat_state(stats) if path[-1] == "count"]
    assert len(counts) == 1, counts
    return int(counts[0].get_value())


def _batch(x, y):
    return {"image": x, "label": y, "index": jnp.arange(len(y))}


# --- defect 1: BatchNorm left in train mode, attacked directly --------------------------


def test_pgd_on_train_mode_module_names_model_eval():
    model = UserNet()  # NNX's default: train mode, batch statistics updated in place
    x, y = _data()
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        arjax.attacks.pgd(model, x, y, key, eps=0.1, num_steps=2)
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):  # inside jit, via a lambda
        jax.jit(lambda a: arjax.attacks.pgd(lambda v: model(v), a, y, key, eps=0.1))(x)
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        jax.jit(lambda a: arjax.attacks.bpgd(model, a, y, key, eps=jnp.full(16, 0.1)).images)(x)
    budgets = ((arjax.attacks.apgd, "num_steps"), (arjax.attacks.square, "num_queries"))
    for attack, budget in budgets:  # attacks without a PGD core: the same message
        with pytest.raises(ValueError, match=r"model\.eval\(\)"):
            attack(model, x, y, key, eps=0.1, **{budget: 2})
    model.eval()  # what the message asks: then the module attacks as is
    x_adv = arjax.attacks.pgd(model, x, y, key, eps=0.1, num_steps=2)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6


def test_adapted_model_attacks_with_running_statistics():
    model = UserNet()
    x, y = _data()
    model(x * 3.0 + 1.0)  # move the running statistics away from their init
    fns, params, stats = adapt(model)
    f = fns.logits_fn(params, stats)
    x_adv = arjax.attacks.pgd(f, x, y, jax.random.key(0), eps=0.1, num_steps=3)
    assert float(jnp.max(jnp.abs(x_adv - x))) <= 0.1 + 1e-6
    model.eval()
    np.testing.assert_allclose(f(x), model(x), rtol=1e-5, atol=1e-6)
    # the attack's objective is higher at x_adv (it ascended), and stats did not move
    ce = lambda v: optax.softmax_cross_entropy_with_integer_labels(f(v), y).mean()  # noqa: E731
    assert float(ce(x_adv)) > float(ce(x))
    mean_after = nnx.state(model, nnx.BatchStat)["norm"]["mean"].value
    np.testing.assert_allclose(stats["norm"]["mean"].value, mean_after)


# --- defect 2: dropout in split_model ---------------------------------------------------


def test_split_model_with_dropout_deterministic_in_attacks_random_in_training():
    model = UserNet(dropout=0.5, batch_norm=False)
    x, y = _data()
    fns, params, stats = split_model(model)
    f = fns.logits_fn(params, stats)
    np.testing.assert_array_equal(f(x), f(x))  # eval: deterministic
    ref = UserNet(dropout=0.5, batch_norm=False)
    ref.eval()
    np.testing.assert_allclose(f(x), ref(x), rtol=1e-6)
    l1, _, s1 = fns.apply(params, stats, x, train=True)
    l2, _, s2 = fns.apply(params, s1, x, train=True)
    l1_again, _, _ = fns.apply(params, stats, x, train=True)
    assert not np.allclose(l1, l2)  # the threaded rng state gives a fresh mask
    np.testing.assert_array_equal(l1, l1_again)  # same state, same mask (pure)
    assert not np.allclose(l1, f(x))


def test_train_step_with_dropout_advances_rng_state_and_learns():
    model = UserNet(dropout=0.2, batch_norm=True)
    fns, params, stats = adapt(model)
    cfg = method_config("adversarial", attack="fgsm", eps=0.05)
    loss = methods.make_loss(cfg, fns, bounds=(0.0, 1.0))
    tx = optax.adam(1e-2)
    state = create_train_state(params, stats, tx, seed=0)
    step = jax.jit(make_train_step(loss, tx))
    x, y = _data(64)
    y = (x[:, 0] > 0.5).astype(jnp.int32)
    first = None
    for _ in range(30):
        state, metrics = step(state, _batch(x, y))
        first = float(metrics["loss"]) if first is None else first
    assert float(metrics["loss"]) < first
    assert _dropout_count(stats) == 0
    # 30 steps x 2 train-mode passes (clean + adversarial half): one mask draw each
    assert _dropout_count(state.batch_stats) == 60


def test_dropout_model_data_parallel_equals_one_device_and_checkpoints(tmp_path):
    # The dropout rng state is replicated with the statistics: 8 devices draw the same
    # global masks as 1, and the typed key + counter round-trip through orbax.
    x, y = _data(64, seed=1)
    batch = {"image": x.reshape(2, 32, 2), "label": y.reshape(2, 32), "index": jnp.zeros((2, 32))}
    results = []
    for n in (1, 8):
        fns, params, stats = adapt(UserNet(dropout=0.3))
        tx = optax.sgd(0.1)
        loss = methods.make_loss(method_config("standard"), fns, None)
        step = compile_multi_step(loss, tx, parallel.make_mesh(n))
        state = create_train_state(params, stats, tx, seed=0)
        state, metrics = step(state, batch, jnp.ones(2, bool))
        results.append(jax.tree.map(np.asarray, (state.params, metrics["loss"])))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *results)
    assert _dropout_count(state.batch_stats) == 2
    ckpt = Checkpointer(str(tmp_path / "checkpoints"))
    ckpt.save(state)
    ckpt.manager.wait_until_finished()
    restored = ckpt.restore(state)
    assert _dropout_count(restored.batch_stats) == 2
    keys = [v for path, v in nnx.to_flat_state(restored.batch_stats) if path[-1] == "key"]
    want = [v for path, v in nnx.to_flat_state(state.batch_stats) if path[-1] == "key"]
    np.testing.assert_array_equal(
        jax.random.key_data(keys[0].get_value()), jax.random.key_data(want[0].get_value())
    )


# --- defect 3: plain logits through methods ----------------------------------------------


def test_make_loss_on_plain_logits_model():
    fns, params, stats = adapt(UserNet())
    x, y = _data()
    for name in ("standard", "trades", "adversarial"):
        loss = methods.make_loss(method_config(name), fns, bounds=(0.0, 1.0))
        value, (metrics, new_stats, _) = jax.jit(loss)(
            params, stats, _batch(x, y), None, jax.random.key(0)
        )
        assert np.isfinite(float(value)) and float(value) > 0.0
        assert not np.allclose(new_stats["norm"]["mean"].value, stats["norm"]["mean"].value)


def test_arfl_on_plain_logits_names_the_method():
    fns, params, stats = adapt(UserNet(), features=None)
    x, y = _data()
    loss = methods.make_loss(method_config("arfl"), fns, bounds=(0.0, 1.0))
    with pytest.raises(ValueError, match=r"'arfl'.*features"):
        loss(params, stats, _batch(x, y), None, jax.random.key(0))


def test_penultimate_features_are_the_head_input():
    model = UserNet(batch_norm=False)
    fns, params, stats = adapt(model, features="penultimate")
    x, _ = _data()
    logits, feats, _ = fns.apply(params, stats, x)
    expected = jax.nn.relu(model.hidden(x))
    np.testing.assert_allclose(feats, expected, rtol=1e-6)
    np.testing.assert_allclose(logits, model(x), rtol=1e-6)
    loss = methods.make_loss(method_config("arfl"), fns, bounds=(0.0, 1.0))
    value, (metrics, *_) = loss(params, stats, _batch(*_data()), None, jax.random.key(0))
    # L_robust (Hao et al. Eq. 1) of the head's input: -mean(sigmoid(|f|)), in [-1, -1/2]
    robust = -jnp.mean(jax.nn.sigmoid(jnp.abs(expected)))
    np.testing.assert_allclose(metrics["robust_clean"], robust, rtol=1e-5)
    assert np.isfinite(float(value))
    # with batch norm and dropout in train mode the taps leave the state's structure as is
    fns, params, stats = adapt(UserNet(dropout=0.2), features="penultimate")
    _, feats, new_stats = fns.apply(params, stats, x, train=True)
    assert feats.shape == (16, 16)
    assert jax.tree.structure(new_stats) == jax.tree.structure(stats)
    assert _dropout_count(new_stats) == 1


def test_adapt_plain_apply_function():
    w = jnp.asarray([[1.0, -1.0], [-1.0, 1.0]])

    def apply_fn(p, x):
        return x @ p["w"]

    fns, params, stats = adapt(apply_fn, params={"w": w})
    x, _ = _data()
    np.testing.assert_allclose(fns.logits_fn(params, stats)(x), x @ w)
    y = jnp.argmax(x @ w, axis=-1)
    loss = methods.make_loss(method_config("standard"), fns, bounds=(0.0, 1.0))
    grads = jax.grad(lambda p: loss(p, stats, _batch(x, y), None, jax.random.key(0))[0])(params)
    assert float(jnp.abs(grads["w"]).sum()) > 0.0


def test_adapt_rejects_bad_arguments():
    with pytest.raises(ValueError, match="features.*valid"):
        adapt(UserNet(), features="last_conv")
    with pytest.raises(ValueError, match="params"):
        adapt(lambda p, x: x)
    with pytest.raises(TypeError, match="nnx.Module or"):
        adapt(3)


# --- defect 4: robust_accuracy eps as an [N] array -------------------------------------------


def test_robust_accuracy_refuses_per_sample_looking_eps():
    fns, params, stats = adapt(UserNet(batch_norm=False))
    f = fns.logits_fn(params, stats)
    x, y = _data(8)
    with pytest.raises(ValueError, match="per-sample"):
        arjax.evaluation.robust_accuracy(
            f, x, y, jax.random.key(0), eps=jnp.full((8,), 0.1), num_steps=1
        )
    spec = arjax.attacks.make_spec("fgsm", "linf", 0.1, 1)
    with pytest.raises(ValueError, match="per-sample"):
        attack_predictions(f, x, y, jax.random.key(0), spec, eps=np.full(8, 0.1))
    with pytest.raises(ValueError, match="curve radii"):
        arjax.evaluation.robust_accuracy(f, x, y, jax.random.key(0), eps=0.1, num_steps=1)
    # an array of another length, or a tuple of N radii, is read as the curve's radii
    curve = arjax.evaluation.robust_accuracy(
        f, x, y, jax.random.key(0), eps=np.asarray([0.0, 0.1]), num_steps=1
    )
    assert curve.eps == (0.0, 0.1) and len(curve.accuracy) == 2
    assert float(curve.accuracy[1]) <= float(curve.accuracy[0])
    as_tuple = arjax.evaluation.robust_accuracy(
        f, x, y, jax.random.key(0), eps=tuple(np.linspace(0.0, 0.3, 8)), num_steps=1
    )
    assert len(as_tuple.accuracy) == 8


def test_cams_of_plain_logits_model_ask_for_the_feature_map():
    class ConvNet(nnx.Module):
        def __init__(self):
            self.conv = nnx.Conv(1, 4, (3, 3), rngs=nnx.Rngs(0))
            self.head = nnx.Linear(4, 2, rngs=nnx.Rngs(1))

        def __call__(self, x):
            return self.head(jnp.mean(jax.nn.relu(self.conv(x)), axis=(1, 2)))

    fns, params, stats = adapt(ConvNet())
    with pytest.raises(ValueError, match="feature map"):
        arjax.evaluation.class_activation_maps(fns, params, stats, jnp.ones((2, 8, 8, 1)))
