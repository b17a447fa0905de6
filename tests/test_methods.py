"""Each method's loss against its equation, on a linear model checked by hand.

With ``logit = w.x + b`` and BCE, the input gradient of the loss is
``(sigmoid(z) - y) w``, so FGSM moves every point by ``-eps (2y - 1) sign(w)``;
the features of a model with no hidden layer are the inputs themselves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import linear_model, scan_body_sizes

from arjax import methods
from arjax.config_lib import ConfigError
from arjax.experiment.presets import base_config

W = np.array([1.5, -2.0], np.float32)
B = 0.25
X = np.array([[0.3, 0.1], [-0.4, 0.2], [0.9, -0.7], [0.05, 0.6]], np.float32)
Y = np.array([1, 0, 1, 0], np.int32)
BATCH = {"image": jnp.asarray(X), "label": jnp.asarray(Y)}


def bce(x, y):
    z = x @ W + B
    p = 1 / (1 + np.exp(-z))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def fgsm_by_hand(x, y, eps):
    return x - eps * (2 * y[:, None] - 1) * np.sign(W)[None, :]


def l_robust_by_hand(features):
    return -np.mean(1 / (1 + np.exp(-np.abs(features))), axis=1)


def run(name, **fields):
    model, params, stats = linear_model(W, B)
    loss_fn = methods.make_loss(methods.method_config(name, **fields), model, None)
    value, (metrics, _) = loss_fn(params, stats, BATCH, jax.random.key(0))
    return float(value), jax.tree.map(float, metrics)


def test_standard_is_mean_bce():
    value, metrics = run("standard")
    np.testing.assert_allclose(value, bce(X, Y).mean(), rtol=1e-5)
    z = X @ W + B
    assert metrics["accuracy"] == pytest.approx(np.mean((z > 0) == Y))


@pytest.mark.parametrize("r", [0.0, 0.5, 0.25, 1.0])
def test_adversarial_mix_eq4(r):
    eps = 0.1
    value, _ = run("adversarial", r=r, attack="fgsm", eps=eps)
    adv = bce(fgsm_by_hand(X, Y, eps), Y).mean()
    want = r * bce(X, Y).mean() + (1 - r) * adv
    np.testing.assert_allclose(value, want, rtol=1e-5)


def test_perturb_fraction_attacks_exactly_that_many():
    eps = 0.1
    value, _ = run("adversarial", r=0.0, attack="fgsm", eps=eps, perturb_fraction=0.5)
    clean, adv = bce(X, Y), bce(fgsm_by_hand(X, Y, eps), Y)
    # Two of the four examples are perturbed: the loss is one of the C(4,2) mixtures.
    mixtures = []
    for i in range(4):
        for j in range(i + 1, 4):
            m = clean.copy()
            m[[i, j]] = adv[[i, j]]
            mixtures.append(m.mean())
    assert min(abs(value - m) for m in mixtures) < 1e-6
    assert clean.mean() < value < adv.mean()


def test_adv_eps_baseline_is_half_clean_half_pgd():
    eps = 0.1
    value, _ = run("adversarial", r=0.5, attack="pgd", eps=eps, num_steps=20, random_start=False)
    # On a linear model every PGD step moves along -(2y-1) sign(w) until the l-inf
    # ball's corner, which is where FGSM lands.
    adv = bce(fgsm_by_hand(X, Y, eps), Y).mean()
    np.testing.assert_allclose(value, 0.5 * bce(X, Y).mean() + 0.5 * adv, rtol=1e-5)


def test_noise_is_within_eps_and_changes_loss():
    value, _ = run("noise", eps=0.1)
    # The loss is BCE at points within 0.1 of X: bounded by the FGSM (worst-case) loss.
    lo = bce(fgsm_by_hand(X, Y, -0.1), Y).mean()
    hi = bce(fgsm_by_hand(X, Y, 0.1), Y).mean()
    assert lo <= value <= hi
    assert value != pytest.approx(bce(X, Y).mean(), abs=1e-7)


@pytest.mark.parametrize("r,sign", [(1.0, -1.0), (0.5, -1.0), (0.5, 1.0), (0.0, -1.0)])
def test_arfl_eq5(r, sign):
    lam, eps = 0.5, 0.05
    value, metrics = run("arfl", r=r, lam=lam, adv_sign=sign, attack="fgsm", eps=eps)
    xa = fgsm_by_hand(X, Y, eps)
    overall = bce(X, Y).mean() + lam * l_robust_by_hand(X).mean()
    adv_term = bce(xa, Y).mean() + sign * lam * l_robust_by_hand(xa).mean()
    want = overall if r == 1 else (1 - r) * adv_term + r * overall
    np.testing.assert_allclose(value, want, rtol=1e-5)
    np.testing.assert_allclose(metrics["robust_clean"], l_robust_by_hand(X).mean(), rtol=1e-5)


def test_arfl_with_r1_equals_standard_plus_lambda_lrobust():
    a, _ = run("arfl", r=1.0, lam=0.0)
    b, _ = run("standard")
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_method_losses_are_differentiable_and_jittable():
    model, params, stats = linear_model(W, B)
    batch = {**BATCH, "margin": jnp.full((4,), 0.1)}  # IMA reads the batch's margins
    for name in methods.METHODS:
        if name == "dsbn":  # needs a dual-batch-norm model: tests/test_dsbn_mirst.py
            continue
        cfg = methods.method_config(name)
        if name == "ima":
            cfg.delta = 0.01
        loss_fn = methods.make_loss(cfg, model, None)
        grads = jax.jit(jax.grad(lambda p, f=loss_fn: f(p, stats, batch, jax.random.key(1))[0]))(
            params
        )
        assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads)), name


@pytest.mark.parametrize(
    "field,value,expect",
    [
        (
            "name",
            "madry",
            "valid choices: adversarial, arfl, dsbn, ima, mart, mirst, mma, noise, standard, "
            "trades",
        ),
        ("r", 1.5, "method.r=1.5 is out of range; valid: [0.0, 1.0]"),
        ("attack", "cw", "valid choices: fgsm, pgd"),
        ("eps", 0.0, "method.eps=0.0 is out of range"),
        ("norm", "l1", "valid choices: l2, linf"),
        ("adv_sign", 2.0, "valid choices: -1, 1"),
    ],
)
def test_bad_method_fields_name_the_choices(field, value, expect):
    cfg = base_config()
    cfg.method = methods.method_config("arfl")
    cfg.method[field] = value
    with pytest.raises(ConfigError) as info:
        methods.validate(cfg)
    assert expect in str(info.value)


def test_unknown_override_field():
    with pytest.raises(ValueError, match="unknown method.lamda"):
        methods.method_config("arfl", lamda=1.0)


@pytest.mark.parametrize(
    "name, fields",
    [
        ("adversarial", dict(eps=0.1, num_steps=3)),
        ("arfl", dict(attack="pgd", eps=0.1, num_steps=3)),
        ("ima", dict(eps_max=1.0, delta=0.01, num_steps=3, num_bisections=2)),
        ("mma", dict(d_max=0.5, num_steps=3, num_bisections=2)),
    ],
)
def test_training_gradient_does_not_linearise_the_attack_loops(name, fields):
    # The attack loops appear in jax.grad(loss) exactly as in the loss itself: the
    # parameters reach the attack with gradients stopped, so no tangent work is traced.
    model, params, stats = linear_model([1.0, -2.0], 0.1)
    loss = methods.make_loss(methods.method_config(name, **fields), model, None)
    batch = {
        "image": jnp.ones((4, 2)),
        "label": jnp.array([0, 1, 0, 1]),
        "margin": jnp.full((4,), 0.1),
    }

    def value(p):
        return loss(p, stats, batch, jax.random.key(0))[0]

    plain = scan_body_sizes(jax.make_jaxpr(value)(params).jaxpr)
    assert plain  # the attack loops are there
    assert scan_body_sizes(jax.make_jaxpr(jax.grad(value))(params).jaxpr) == plain
