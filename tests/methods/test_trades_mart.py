"""TRADES and MART against their equations, computed by hand in numpy on a tiny MLP.

The adversarial point ``x'`` is produced by calling :func:`arjax.attacks.pgd` here with
the key and attack arguments the loss uses; everything after it is numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import scan_body_sizes, tiny_config

from arjax import attacks, methods
from arjax.config_lib import ConfigError
from arjax.experiment import train as loop
from arjax.experiment.presets import base_config, method_config
from arjax.models import split_model
from arjax.models.mlp import MLP

RNG = np.random.default_rng(0)
W1 = RNG.normal(size=(2, 5)).astype(np.float32)
B1 = RNG.normal(size=5).astype(np.float32) * 0.1
X = RNG.normal(size=(6, 2)).astype(np.float32)
KEY = jax.random.key(3)
EPS, STEPS, ALPHA = 0.2, 3, 4.0


def tiny_mlp(num_outputs):
    """``relu(x W1 + b1) W2 + b2`` with fixed weights; returns (fns, params, stats, W2, b2)."""
    rng = np.random.default_rng(num_outputs)
    w2 = rng.normal(size=(5, num_outputs)).astype(np.float32)
    b2 = rng.normal(size=num_outputs).astype(np.float32) * 0.1
    model = MLP(2, hidden=(5,), num_outputs=num_outputs, rngs=nnx.Rngs(0))
    model.hidden[0].kernel.value = jnp.asarray(W1)
    model.hidden[0].bias.value = jnp.asarray(B1)
    model.head.kernel.value = jnp.asarray(w2)
    model.head.bias.value = jnp.asarray(b2)
    return (*split_model(model), w2, b2)


def np_logits(x, w2, b2):
    z = np.maximum(x.astype(np.float64) @ W1 + B1, 0.0) @ w2 + b2
    return z[:, 0] if w2.shape[1] == 1 else z


def softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def probs(z):
    """Class probabilities ``[B, K]``; a single logit as the two classes ``[1-p, p]``."""
    if z.ndim == 1:
        p = 1 / (1 + np.exp(-z))
        return np.stack([1 - p, p], axis=-1)
    return softmax(z)


def kl(p, q):
    return np.sum(p * (np.log(p) - np.log(q)), axis=-1)


def labels(num_outputs):
    return np.arange(6) % max(num_outputs, 2)


def setup(name, num_outputs, **fields):
    fns, params, stats, w2, b2 = tiny_mlp(num_outputs)
    y = labels(num_outputs).astype(np.int32)
    batch = {"image": jnp.asarray(X), "label": jnp.asarray(y)}
    cfg = method_config(name, eps=EPS, num_steps=STEPS, alpha=ALPHA, **fields)
    loss_fn = methods.make_loss(cfg, fns, None)
    f = fns.logits_fn(params, stats, train=False)
    return loss_fn, params, stats, batch, f, y, w2, b2


def pgd(f, y, loss):
    x_adv = attacks.pgd(
        f,
        jnp.asarray(X),
        jnp.asarray(y),
        KEY,
        eps=EPS,
        step_size=ALPHA * EPS / STEPS,
        num_steps=STEPS,
        norm="linf",
        loss=loss,
        random_start=True,
        bounds=None,
    )
    return np.asarray(x_adv)


HEADS = [3, 1]  # softmax over three classes; one binary logit


@pytest.mark.parametrize("num_outputs", HEADS)
@pytest.mark.parametrize(
    "fields,beta", [({}, 6.0), ({"beta": 0.5}, 0.5), ({"inv_beta": 4.0}, 0.25)]
)
def test_trades_is_ce_plus_beta_kl(num_outputs, fields, beta):
    loss_fn, params, stats, batch, f, y, w2, b2 = setup("trades", num_outputs, **fields)
    value, (metrics, *_) = loss_fn(params, stats, batch, None, KEY)
    x_adv = pgd(f, y, "kl")
    assert np.all(np.abs(x_adv - X) <= EPS + 1e-6) and not np.allclose(x_adv, X)
    p, q = probs(np_logits(X, w2, b2)), probs(np_logits(x_adv, w2, b2))
    ce = -np.log(p[np.arange(6), y])
    want = np.mean(ce + beta * kl(p, q))
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["loss_kl"]), kl(p, q).mean(), rtol=1e-4)


def test_trades_attack_increases_the_kl():
    loss_fn, params, stats, batch, f, y, w2, b2 = setup("trades", 3)
    x_adv = pgd(f, y, "kl")
    start = np.asarray(
        attacks.pgd(
            f, jnp.asarray(X), jnp.asarray(y), KEY, eps=EPS, num_steps=0, loss="kl", bounds=None
        )
    )
    p = probs(np_logits(X, w2, b2))
    assert (
        kl(p, probs(np_logits(x_adv, w2, b2))).sum() > kl(p, probs(np_logits(start, w2, b2))).sum()
    )


@pytest.mark.parametrize("num_outputs", HEADS)
@pytest.mark.parametrize("lam", [6.0, 0.0, 1.5])
def test_mart_is_bce_plus_weighted_kl(num_outputs, lam):
    loss_fn, params, stats, batch, f, y, w2, b2 = setup("mart", num_outputs, lam=lam)
    value, _ = loss_fn(params, stats, batch, None, KEY)
    x_adv = pgd(f, y, "ce")
    p, q = probs(np_logits(X, w2, b2)), probs(np_logits(x_adv, w2, b2))
    rows = np.arange(6)
    wrong = q.copy()
    wrong[rows, y] = -np.inf
    bce = -np.log(q[rows, y]) - np.log(1 - wrong.max(axis=-1))
    want = np.mean(bce + lam * kl(p, q) * (1 - p[rows, y]))
    np.testing.assert_allclose(float(value), want, rtol=1e-5)


def test_mart_binary_bce_is_twice_the_log_loss():
    loss_fn, params, stats, batch, f, y, w2, b2 = setup("mart", 1, lam=0.0)
    value, _ = loss_fn(params, stats, batch, None, KEY)
    z = np_logits(pgd(f, y, "ce"), w2, b2)
    p_y = np.where(y == 1, 1 / (1 + np.exp(-z)), 1 / (1 + np.exp(z)))
    np.testing.assert_allclose(float(value), np.mean(-2 * np.log(p_y)), rtol=1e-5)


@pytest.mark.parametrize("name", ["trades", "mart"])
@pytest.mark.parametrize("num_outputs", HEADS)
def test_gradients_are_finite_and_jittable(name, num_outputs):
    loss_fn, params, stats, batch, *_ = setup(name, num_outputs)
    grads = jax.jit(jax.grad(lambda p: loss_fn(p, stats, batch, None, KEY)[0]))(params)
    leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in leaves)
    assert any(np.any(g != 0) for g in leaves)


@pytest.mark.parametrize("name", ["trades", "mart"])
def test_training_gradient_does_not_linearise_the_attack_loop(name):
    loss_fn, params, stats, batch, *_ = setup(name, 3)

    def value(p):
        return loss_fn(p, stats, batch, None, KEY)[0]

    plain = scan_body_sizes(jax.make_jaxpr(value)(params).jaxpr)
    assert plain
    assert scan_body_sizes(jax.make_jaxpr(jax.grad(value))(params).jaxpr) == plain


def test_mart_boosted_ce_is_finite_for_confident_logits():
    from arjax.methods.mart import boosted_ce

    logits = jnp.array([[60.0, -60.0, 0.0], [-60.0, 60.0, 0.0]])
    values = boosted_ce(logits, jnp.array([0, 0]))
    assert np.all(np.isfinite(np.asarray(values)))
    np.testing.assert_allclose(float(values[1]), 120.0 + 60.0, rtol=1e-4)


def test_defaults():
    t = methods.from_config(method_config("trades"))
    assert (t.beta, t.inv_beta, t.attack.text) == (6.0, 0.0, "pgd:linf:0.1:10:loss=kl")
    assert (t.attack.num_steps, t.attack.alpha, t.attack.random_start) == (10, 4.0, True)
    m = methods.from_config(method_config("mart"))
    assert (m.lam, m.attack.text, m.attack.loss, m.attack.random_start) == (
        6.0,
        "pgd:linf:0.1:10",
        "ce",
        True,
    )


@pytest.mark.parametrize(
    "name,fields,expect",
    [
        ("trades", {"beta": -1.0}, "method.beta=-1.0 is out of range"),
        ("trades", {"inv_beta": -0.5}, "method.inv_beta=-0.5 is out of range"),
        ("trades", {"beta": 1.0, "inv_beta": 2.0}, "method.beta=1.0 is set too"),
        ("trades", {"attack": "pgd:linf:0:10:loss=kl"}, "the radius must be > 0"),
        ("trades", {"attack": "pgd:linf:0.1:0:loss=kl"}, "steps=0 in method.attack is out"),
        ("trades", {"attack": "pgd:linf:0.1:10"}, "TRADES maximises the KL by PGD"),
        ("mart", {"lam": -0.1}, "method.lam=-0.1 is out of range"),
        ("mart", {"attack": "pgd:linf:0.1:10:loss=dlr"}, "has no loss 'dlr'"),
    ],
)
def test_bad_fields_raise_config_error_naming_them(name, fields, expect):
    cfg = base_config()
    cfg.method = method_config(name, **fields)
    with pytest.raises(ConfigError) as info:
        methods.from_config(cfg.method)
    assert expect in str(info.value)


@pytest.mark.parametrize("name", ["trades", "mart"])
def test_valid_defaults_pass(name):
    cfg = base_config()
    cfg.method = method_config(name)
    methods.from_config(cfg.method)
    cfg.method = method_config(name, **({"inv_beta": 6.0} if name == "trades" else {}))
    methods.from_config(cfg.method)


@pytest.mark.parametrize("name", ["trades", "mart"])
def test_short_training_runs(tmp_path, name):
    cfg = tiny_config(num_epochs=1)
    cfg.method = method_config(name, eps=0.05, num_steps=3)
    report = loop.run(cfg, str(tmp_path), progress=False)
    summary = {k: v["mean"] for k, v in report["summary"].items()}
    assert np.isfinite(summary["clean/accuracy"])
    assert 0.0 <= summary["clean/accuracy"] <= 1.0
