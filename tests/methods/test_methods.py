"""Each method's loss against its equation, on a linear model checked by hand.

With ``logit = w.x + b`` and BCE, the input gradient of the loss is
``(sigmoid(z) - y) w``, so FGSM moves every point by ``-eps (2y - 1) sign(w)``;
the features of a model with no hidden layer are the inputs themselves.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import linear_model, scan_body_sizes

from arjax import methods
from arjax.config_lib import ConfigError
from arjax.experiment.presets import base_config, method_config

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
    loss_fn = methods.make_loss(method_config(name, **fields), model, None)
    value, out = loss_fn(params, stats, BATCH, None, jax.random.key(0))
    return float(value), jax.tree.map(float, out.metrics)


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
    for name, cls in methods.METHODS.items():
        assert dataclasses.is_dataclass(cls) and cls.name == name
        if name == "dsbn":  # needs a dual-batch-norm model: tests/methods/test_dsbn_mirst.py
            continue
        method = methods.from_config({"name": name}, num_epochs=10)  # IMA: delta from epochs
        state = method.init_state(4)  # IMA / MMA: the batch's margins
        loss_fn = methods.make_loss(method, model, None)
        grads = jax.jit(
            jax.grad(lambda p, f=loss_fn, s=state: f(p, stats, BATCH, s, jax.random.key(1))[0])
        )(params)
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
        ("attack", "cw:linf:0.1", "unknown attack 'cw' in method.attack; valid choices: apgd"),
        ("attack", "fgsm:linf:0", "method.attack='fgsm:linf:0': the radius must be > 0"),
        ("attack", "fgsm:l1:0.1", "unknown norm 'l1' in method.attack; valid choices: linf, l2"),
        ("adv_sign", 2.0, "valid choices: -1, 1"),
        ("lam", -1.0, "method.lam=-1.0 is out of range; valid: [0.0, inf]"),
        ("robust_on", "logit", "did you mean 'logits'?"),
    ],
)
def test_bad_method_fields_name_the_choices(field, value, expect):
    cfg = base_config()
    cfg.method = method_config("arfl")
    cfg.method[field] = value
    with pytest.raises(ConfigError) as info:
        methods.from_config(cfg.method)
    assert expect in str(info.value)


def test_a_mistyped_method_field_fails_at_construction_with_the_nearest_name():
    with pytest.raises(ConfigError, match="unknown field method.lamda.*did you mean method.lam"):
        method_config("arfl", lamda=1.0)
    with pytest.raises(ConfigError, match="unknown field method.lamda.*did you mean method.lam"):
        methods.from_config({"name": "arfl", "lamda": 1.0})
    with pytest.raises(ConfigError, match="unknown method.name 'trade'.*did you mean 'trades'"):
        methods.from_config({"name": "trade"})
    with pytest.raises(ConfigError, match="method.beta=-1.0 is out of range"):
        methods.TRADES(beta=-1.0)


def test_old_attack_fields_read_into_one_spec():
    old = dict(name="adversarial", attack="pgd", norm="l2", eps=0.5, num_steps=7, alpha=2.5)
    old.update(step_size=None, attack_loss="ce", random_start=True, attack_train_mode=False)
    method = methods.from_config(old)
    assert method == methods.Adversarial(attack="pgd:l2:0.5:7:alpha=2.5")
    assert method.attack.text == "pgd:l2:0.5:7:alpha=2.5"
    trades = methods.from_config({"name": "trades", "eps": 0.3, "num_steps": 20})
    assert trades.attack.text == "pgd:linf:0.3:20:loss=kl"
    with pytest.raises(ConfigError, match="full attack spec, so method.eps cannot be set"):
        methods.from_config({"name": "adversarial", "attack": "pgd:linf:0.1:3", "eps": 0.2})


def test_ima_derives_its_delta_without_writing_the_config():
    section = method_config("ima", eps_max=0.3)
    method = methods.from_config(section, num_epochs=30)
    assert method.delta == pytest.approx(0.01) and section.delta == 0.0
    assert method == methods.IMA(eps_max=0.3, delta=0.01)
    with pytest.raises(ConfigError, match="number of epochs"):
        methods.from_config(section)


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
    method = methods.from_config(method_config(name, **fields))
    loss = methods.make_loss(method, model, None)
    batch = {"image": jnp.ones((4, 2)), "label": jnp.array([0, 1, 0, 1])}
    state = method.init_state(4)

    def value(p):
        return loss(p, stats, batch, state, jax.random.key(0))[0]

    plain = scan_body_sizes(jax.make_jaxpr(value)(params).jaxpr)
    assert plain  # the attack loops are there
    assert scan_body_sizes(jax.make_jaxpr(jax.grad(value))(params).jaxpr) == plain
