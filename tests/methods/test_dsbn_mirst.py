"""DSBN and MIRST against their equations, computed by hand in numpy on tiny MLPs.

The adversarial points come from :func:`arjax.attacks.pgd` called here with the key and
arguments the loss uses (for DSBN on a hand-written jnp network of the branch the attack
must use); everything after it is numpy.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from helpers import STEP_MODEL, compiled_step_setup
from test_trades_mart import ALPHA, B1, EPS, KEY, STEPS, W1, X, kl, labels, np_logits, probs
from test_trades_mart import setup as fixed_mlp_setup

from arjax import attacks, methods
from arjax.config_lib import ConfigError
from arjax.experiment.presets import base_config, method_config
from arjax.models import build_model, dualize, split_model
from arjax.models.mlp import MLP

BN_EPS, MOMENTUM = 1e-5, 0.9
RNG = np.random.default_rng(7)
# Per branch: scale, bias, running mean, running variance of the 5 hidden units.
BRANCH_VALUES = {
    name: (
        RNG.uniform(0.5, 1.5, 5).astype(np.float32),
        RNG.normal(size=5).astype(np.float32) * 0.3,
        RNG.normal(size=5).astype(np.float32) * 0.5,
        RNG.uniform(0.5, 2.0, 5).astype(np.float32),
    )
    for name in ("clean", "adversarial")
}


def dual_mlp(num_outputs):
    """``relu(BN_d(x W1)) W2 + b2`` with a dual BN of fixed values per branch."""
    rng = np.random.default_rng(num_outputs)
    w2 = rng.normal(size=(5, num_outputs)).astype(np.float32)
    b2 = rng.normal(size=num_outputs).astype(np.float32) * 0.1
    model = MLP(2, hidden=(5,), num_outputs=num_outputs, batch_norm=True, rngs=nnx.Rngs(0))
    dualize(model)
    model.hidden[0].kernel.value = jnp.asarray(W1)
    assert model.hidden[0].bias is None  # the batch norm's bias replaces it
    for name, (g, b, mu, var) in BRANCH_VALUES.items():
        bn = model.norms[0].norms[name]
        bn.scale.value, bn.bias.value = jnp.asarray(g), jnp.asarray(b)
        bn.mean.value, bn.var.value = jnp.asarray(mu), jnp.asarray(var)
    model.head.kernel.value = jnp.asarray(w2)
    model.head.bias.value = jnp.asarray(b2)
    return (*split_model(model), w2, b2)


def hidden(x):
    return x.astype(np.float64) @ W1


def np_dual_logits(x, branch, w2, b2, train):
    """Numpy forward; ``train`` normalises with the batch's biased statistics."""
    g, b, mu, var = BRANCH_VALUES[branch]
    h = hidden(x)
    if train:
        mu, var = h.mean(axis=0), h.var(axis=0)
    z = np.maximum((h - mu) / np.sqrt(var + BN_EPS) * g + b, 0.0) @ w2 + b2
    return z[:, 0] if w2.shape[1] == 1 else z


def jnp_eval_logits(branch, w2, b2):
    """The eval-mode network of ``branch`` in jnp, written without arjax (for the attack)."""
    g, b, mu, var = (jnp.asarray(v) for v in BRANCH_VALUES[branch])

    def f(x):
        h = (x @ W1 - mu) / jnp.sqrt(var + BN_EPS) * g + b
        z = jax.nn.relu(h) @ w2 + b2
        return z[:, 0] if w2.shape[1] == 1 else z

    return f


def ce(z, y):
    return -np.log(probs(z)[np.arange(len(y)), y])


def dsbn_setup(num_outputs, **fields):
    fns, params, stats, w2, b2 = dual_mlp(num_outputs)
    y = labels(num_outputs).astype(np.int32)
    batch = {"image": jnp.asarray(X), "label": jnp.asarray(y)}
    cfg = method_config("dsbn", eps=EPS, num_steps=STEPS, alpha=ALPHA, **fields)
    return methods.make_loss(cfg, fns, None), fns, params, stats, batch, y, w2, b2


def pgd(f, x, y, eps, step):
    return np.asarray(
        attacks.pgd(
            f,
            jnp.asarray(x),
            jnp.asarray(y),
            KEY,
            eps=eps,
            step_size=step,
            num_steps=STEPS,
            norm="linf",
            loss="ce",
            random_start=True,
            bounds=None,
        )
    )


@pytest.mark.parametrize("num_outputs", [3, 1])
@pytest.mark.parametrize("r,attack_branch", [(0.5, "adversarial"), (0.25, "clean")])
def test_dsbn_loss_is_the_branch_mix_of_the_equation(num_outputs, r, attack_branch):
    loss_fn, _, params, stats, batch, y, w2, b2 = dsbn_setup(
        num_outputs, r=r, attack_branch=attack_branch
    )
    value, (metrics, new_stats, _) = loss_fn(params, stats, batch, None, KEY)
    x_adv = pgd(jnp_eval_logits(attack_branch, w2, b2), X, y, EPS, ALPHA * EPS / STEPS)
    assert np.all(np.abs(x_adv - X) <= EPS + 1e-6) and not np.allclose(x_adv, X)
    clean = ce(np_dual_logits(X, "clean", w2, b2, train=True), y).mean()
    adv = ce(np_dual_logits(x_adv, "adversarial", w2, b2, train=True), y).mean()
    np.testing.assert_allclose(float(value), r * clean + (1 - r) * adv, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss_adv"]), adv, rtol=1e-5)
    # Each forward moved only its own branch's running statistics (flax momentum 0.9).
    for name, x in (("clean", X), ("adversarial", x_adv)):
        _, _, mu, var = BRANCH_VALUES[name]
        h = hidden(x)
        got = new_stats["norms"][0]["norms"][name]
        np.testing.assert_allclose(
            got["mean"][...], MOMENTUM * mu + (1 - MOMENTUM) * h.mean(0), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            got["var"][...], MOMENTUM * var + (1 - MOMENTUM) * h.var(0), rtol=1e-5
        )


def test_dsbn_with_r_one_leaves_the_adversarial_branch_untouched():
    loss_fn, _, params, stats, batch, y, w2, b2 = dsbn_setup(3, r=1.0)
    value, (_, new_stats, _) = loss_fn(params, stats, batch, None, KEY)
    np.testing.assert_allclose(
        float(value), ce(np_dual_logits(X, "clean", w2, b2, train=True), y).mean(), rtol=1e-5
    )
    adv = new_stats["norms"][0]["norms"]["adversarial"]
    np.testing.assert_array_equal(adv["mean"][...], BRANCH_VALUES["adversarial"][2])


@pytest.mark.parametrize("num_outputs", [3, 1])
def test_evaluation_and_test_attacks_use_the_clean_branch(num_outputs):
    fns, params, stats, w2, b2 = dual_mlp(num_outputs)
    clean = np_dual_logits(X, "clean", w2, b2, train=False)
    other = np_dual_logits(X, "adversarial", w2, b2, train=False)
    assert not np.allclose(clean, other, atol=1e-2)
    logits, _, same = fns.apply(params, stats, jnp.asarray(X))  # the evaluation path
    np.testing.assert_allclose(np.asarray(logits), clean, rtol=1e-5, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, same, stats)
    f = jax.jit(fns.logits_fn(params, stats))  # what test-time attacks and saliency call
    np.testing.assert_allclose(np.asarray(f(jnp.asarray(X))), clean, rtol=1e-5, atol=1e-6)


def test_branch_model_rejects_unknown_branches_and_plain_models():
    from arjax.models import branch_model

    fns, params, stats, *_ = dual_mlp(3)
    with pytest.raises(ValueError, match="unknown batch-norm branch 'dirty'; valid: clean, adv"):
        branch_model(fns, params, stats, "dirty")
    plain, p, s = build_model(ml_collections.ConfigDict(STEP_MODEL), (2,), 2, seed=0)
    with pytest.raises(ValueError, match="no dual batch norm"):
        branch_model(plain, p, s, "clean")


LEVELS = (1 / 3, 2 / 3, 1.0)


@pytest.mark.parametrize("num_outputs", [3, 1])
@pytest.mark.parametrize("levels,beta", [(LEVELS, 1.0), ((0.5, 1.0), 0.0), ((1.0,), 2.5)])
def test_mirst_loss_is_the_multi_instance_self_training_equation(num_outputs, levels, beta):
    loss_fn, params, stats, batch, f, y, w2, b2 = fixed_mlp_setup(
        "mirst", num_outputs, levels=levels, beta=beta
    )
    value, (metrics, *_) = loss_fn(params, stats, batch, None, KEY)
    k = len(levels)
    radii = np.repeat(np.asarray(levels, np.float32) * EPS, len(X))
    x_inst = pgd(f, np.concatenate([X] * k), np.tile(y, k), radii, ALPHA * radii / STEPS)
    dist = np.abs(x_inst - np.concatenate([X] * k)).max(axis=1)
    assert np.all(dist <= radii + 1e-6) and np.all(dist > 0.5 * radii)

    p = probs(np_logits(X, w2, b2))
    per_level = [ce(np_logits(x_inst[i * 6 : (i + 1) * 6], w2, b2), y).mean() for i in range(k)]
    supervised = (ce(np_logits(X, w2, b2), y).mean() + sum(per_level)) / (k + 1)
    self_training = kl(np.tile(p, (k, 1)), probs(np_logits(x_inst, w2, b2))).mean()
    np.testing.assert_allclose(float(value), supervised + beta * self_training, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss_kl"]), self_training, rtol=1e-4, atol=1e-7)


def test_mirst_self_training_target_carries_no_gradient():
    # The pseudo-label P(x) is a constant target: the loss's parameter gradient equals
    # that of a hand-written jnp loss whose teacher is a numpy constant.
    loss_fn, params, stats, batch, f, y, w2, b2 = fixed_mlp_setup(
        "mirst", 3, levels=(1.0,), beta=1.0
    )
    grads = jax.grad(lambda p: loss_fn(p, stats, batch, None, KEY)[0])(params)
    x_inst = jnp.asarray(pgd(f, X, y, np.full(6, EPS, np.float32), ALPHA * EPS / STEPS))
    teacher = jnp.asarray(probs(np_logits(X, w2, b2)), jnp.float32)

    def hand(w1, w2_):
        def log_p(x):
            return jax.nn.log_softmax(jax.nn.relu(x @ w1 + B1) @ w2_ + b2)

        def nll(x):
            return -jnp.mean(log_p(x)[jnp.arange(6), y])

        kl_ = jnp.mean(jnp.sum(teacher * (jnp.log(teacher) - log_p(x_inst)), axis=-1))
        return (nll(jnp.asarray(X)) + nll(x_inst)) / 2 + kl_

    g_w1, g_w2 = jax.grad(hand, argnums=(0, 1))(jnp.asarray(W1), jnp.asarray(w2))
    np.testing.assert_allclose(grads["hidden"][0]["kernel"][...], g_w1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grads["head"]["kernel"][...], g_w2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["dsbn", "mirst"])
def test_gradients_are_finite_and_jittable(name):
    if name == "dsbn":
        loss_fn, _, params, stats, batch, *_ = dsbn_setup(3)
    else:
        loss_fn, params, stats, batch, *_ = fixed_mlp_setup("mirst", 3)
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, stats, batch, None, KEY)[0]))(params)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert any(np.any(g != 0) for g in leaves)
    if name == "dsbn":  # both branches' affine parameters are trained
        for branch in ("clean", "adversarial"):
            assert np.any(np.asarray(grads["norms"][0]["norms"][branch]["scale"][...]) != 0)


DSBN_MODEL = {**STEP_MODEL, "layer_norm": (), "batch_norm": True, "dual_batch_norm": True}
STEP_METHODS = {
    "dsbn": (method_config("dsbn", eps=0.1, num_steps=3), DSBN_MODEL),
    "mirst": (method_config("mirst", eps=0.1, num_steps=3), None),
}


@pytest.mark.parametrize("name", list(STEP_METHODS))
def test_step_traces_once_and_eight_devices_equal_one(name):
    method, model = STEP_METHODS[name]
    results = []
    for n in (8, 1):
        state, step, batches, calls = compiled_step_setup(method, n, model=model)
        for i in range(2):
            state, metrics = step(state, batches(3 * i), jnp.ones(3, bool))
        if n == 8:
            assert calls["traces"] == 1 and step._cache_size() == 1
        results.append(jax.tree.map(np.asarray, (state.params, state.batch_stats, metrics["loss"])))
    (p8, s8, l8), (p1, s1, l1) = results
    close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)  # noqa: E731
    jax.tree.map(close, (p1, s1), (p8, s8))
    np.testing.assert_allclose(l1, l8, rtol=1e-5)
    if name == "dsbn":  # the two branches saw different inputs
        norms = s1["norms"][0]["norms"]
        assert not np.allclose(norms["clean"]["mean"], norms["adversarial"]["mean"])


@pytest.mark.parametrize(
    "name,fields,expect",
    [
        ("dsbn", {"attack_branch": "dirty"}, "unknown method.attack_branch 'dirty'"),
        ("dsbn", {"r": 0.0}, "method.r=0.0 is out of range"),
        ("dsbn", {"eps": -0.1}, "eps=-0.1 in method.attack is out of range"),
        ("mirst", {"levels": ()}, "method.levels=()"),
        ("mirst", {"levels": (0.5, 0.0)}, "method.levels=(0.5, 0.0)"),
        ("mirst", {"levels": (1.5,)}, "method.levels=(1.5,)"),
        ("mirst", {"levels": "1/3"}, "method.levels='1/3'"),
        ("mirst", {"beta": -1.0}, "method.beta=-1.0 is out of range"),
        ("mirst", {"num_steps": 0}, "steps=0 in method.attack is out of range"),
    ],
)
def test_bad_fields_raise_config_error_naming_them(name, fields, expect):
    cfg = base_config()
    cfg.model.update(batch_norm=True, dual_batch_norm=True)
    cfg.method = method_config(name, **fields)
    with pytest.raises(ConfigError) as info:
        methods.from_config(cfg.method)
    assert expect in str(info.value)


def test_dsbn_needs_a_dual_batch_norm_model():
    from arjax.models import build_model

    method = methods.from_config(method_config("dsbn"))
    plain = build_model(ml_collections.ConfigDict(dict(name="mlp", hidden=(4,))), (2,), 2, 0)
    with pytest.raises(ConfigError, match="method dsbn needs model.dual_batch_norm=True"):
        method.check_model(*plain)
    dual = dict(name="mlp", hidden=(4,), batch_norm=True, dual_batch_norm=True)
    method.check_model(*build_model(ml_collections.ConfigDict(dual), (2,), 2, 0))
    methods.from_config(method_config("mirst"))


@pytest.mark.parametrize(
    "model,expect",
    [
        (dict(name="mlp", hidden=(4,), dual_batch_norm=True), "model.dual_batch_norm=True"),
        (dict(name="vgg16", hidden=8, dual_batch_norm=True), "VGG has no batch-norm layer"),
        (dict(name="mlp", hidden=(4,), batch_norm=True, layer_norm=True), "exclusive"),
        (dict(name="resnet18", batch_norm=True), "model.batch_norm is a vgg16 / mlp field"),
    ],
)
def test_models_without_batch_norm_refuse_dual_batch_norm(model, expect):
    shape = (2,) if model["name"] == "mlp" else (32, 32, 3)
    with pytest.raises(ValueError, match=expect):
        build_model(ml_collections.ConfigDict(model), shape, 2, seed=0)


def test_dual_resnet18_has_both_branches_everywhere_and_trains_each():
    cfg = ml_collections.ConfigDict(
        dict(name="resnet18", num_outputs=1, input_norm="none", dual_batch_norm=True)
    )
    fns, params, stats = build_model(cfg, (32, 32, 3), 2, seed=0)
    method = method_config("dsbn", eps=0.03, num_steps=1)
    loss_fn = jax.jit(methods.make_loss(method, fns, (0.0, 1.0)))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(4, 32, 32, 3)), jnp.float32)
    batch = {"image": x, "label": jnp.asarray([0, 1, 0, 1])}
    value, (_, new_stats, _) = loss_fn(params, stats, batch, None, KEY)
    assert np.isfinite(float(value))
    moved = {
        b: np.abs(new_stats["bn1"]["norms"][b]["mean"][...] - stats["bn1"]["norms"][b]["mean"][...])
        for b in ("clean", "adversarial")
    }
    assert moved["clean"].max() > 0 and moved["adversarial"].max() > 0
    assert not np.allclose(moved["clean"], moved["adversarial"])
    flat = [p for p, _ in jax.tree_util.tree_flatten_with_path(stats)[0]]
    paths = ["/".join(str(getattr(k, "key", k)) for k in p) for p in flat]
    assert len(paths) == 2 * 2 * 20  # 20 batch norms x 2 branches x (mean, var)
    assert sum("/norms/clean/" in p for p in paths) == sum(
        "/norms/adversarial/" in p for p in paths
    )
    # Both branches start from the same (torchvision) initialisation, in distinct buffers.
    bn = params["layer1"][0]["bn1"]["norms"]
    np.testing.assert_array_equal(bn["clean"]["scale"][...], bn["adversarial"]["scale"][...])
    assert bn["clean"]["scale"][...] is not bn["adversarial"]["scale"][...]


def test_vgg16_batch_norm_is_torchvisions_vgg16_bn_layout():
    from arjax.models import export_torchvision, import_torchvision, vgg16

    model = vgg16(1, 3, hidden=8, batch_norm=True, seed=0)
    convs = [0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40]  # torchvision's vgg16_bn
    state = export_torchvision(model)
    assert sorted({int(k.split(".")[1]) for k in state if k.startswith("features.")}) == sorted(
        convs + [c + 1 for c in convs]
    )
    assert state["features.41.running_var"].shape == (512,)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 32, 32, 3)), jnp.float32)
    fns, params, stats = split_model(model)
    want, features, _ = fns.apply(params, stats, x, train=True)
    assert features.shape == (2, 2, 2, 512)
    other = vgg16(1, 3, hidden=8, batch_norm=True, seed=1)
    report = import_torchvision(other, state)
    assert len(report.dropped) == 13  # the num_batches_tracked counters
    got = split_model(other)
    np.testing.assert_allclose(got[0].apply(*got[1:], x, train=True)[0], want, rtol=1e-5)
