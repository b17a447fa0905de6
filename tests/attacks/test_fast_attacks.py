"""FGSM-RS (Wong et al. 2020) and N-FGSM (de Jorge et al. 2022): balls, bounds, steps, registry."""

import functools

import attack_models
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax.attacks import (
    ATTACKS,
    SpecError,
    clip_to_bounds,
    fgsm_rs,
    lp_norm,
    n_fgsm,
    parse_attack,
    run_attack,
)
from arjax.attacks.geometry import random_init

EPS = 0.1


def _linear(w):
    """One binary logit ``x @ w``: the ascent direction of the loss at label 0 is ``+w``."""
    w = jnp.asarray(w, jnp.float32)
    return lambda x: x @ w


def _jit(attack, logits_fn, **static):
    """``attack`` on ``logits_fn`` compiled once (``norm`` etc. fixed)."""
    return jax.jit(functools.partial(attack, logits_fn, **static))


def _flat(b=64, d=16, seed=0, lo=0.0, hi=1.0):
    return jnp.asarray(np.random.default_rng(seed).uniform(lo, hi, (b, d)), jnp.float32)


def test_fgsm_rs_start_is_uniform_in_the_ball_and_inside_the_bounds():
    # a flat model has zero gradient, so the single step is sign(0) = 0: the output is the start
    x = _flat(lo=0.0, hi=1.0)
    flat = lambda z: jnp.zeros((z.shape[0], 3)) + 0.0 * z.sum()  # noqa: E731
    start = _jit(fgsm_rs, flat)(x, jnp.zeros(64, jnp.int32), jax.random.key(0), eps=EPS)
    delta = np.asarray(start - x)
    assert np.all(np.abs(delta) <= EPS + 1e-7)
    assert np.all((np.asarray(start) >= 0) & (np.asarray(start) <= 1))
    # uniform in [-eps, eps] away from the bounds: mean |delta| / eps near 1/2, both signs
    inner = (np.asarray(x) > EPS) & (np.asarray(x) < 1 - EPS)
    assert abs(np.abs(delta[inner]).mean() / EPS - 0.5) < 0.05
    assert (delta[inner] > 0).mean() == pytest.approx(0.5, abs=0.06)


def test_fgsm_rs_on_a_linear_model_lands_on_the_sign_of_the_weight():
    w = np.random.default_rng(1).normal(size=16)
    x = jnp.full((8, 16), 0.5, jnp.float32)
    y = jnp.zeros(8, jnp.int32)  # label 0: the loss grows along +w
    key = jax.random.key(3)
    x_adv = _jit(fgsm_rs, _linear(w))(x, y, key, eps=EPS)
    # the same start, redrawn; the 1.25 eps step towards sign(w), projected onto the ball
    start = clip_to_bounds(x + random_init(key, x, EPS, "linf"), (0.0, 1.0)) - x
    step = 1.25 * EPS * np.sign(w)
    want = np.clip(np.asarray(start) + step, -EPS, EPS)
    np.testing.assert_allclose(np.asarray(x_adv - x), want, atol=1e-7)
    # a step longer than the ball's width: every coordinate ends on sign(w)'s side
    assert np.all(np.sign(np.asarray(x_adv - x)) == np.sign(w))


def test_fgsm_rs_result_inside_the_ball_and_the_bounds():
    logits_fn = attack_models.model("softmax3")
    x = jnp.asarray(attack_models.data(0))
    y = jnp.asarray(attack_models.labels("softmax3", np.asarray(x)))
    for norm, eps in (("linf", 0.3), ("l2", 0.8)):
        x_adv = _jit(fgsm_rs, logits_fn, norm=norm)(x, y, jax.random.key(0), eps=eps)
        assert np.all(np.asarray(lp_norm(x_adv - x, norm)) <= eps + 1e-6)
        assert np.all((np.asarray(x_adv) >= 0) & (np.asarray(x_adv) <= 1))
        assert not np.allclose(np.asarray(x_adv), np.asarray(x))


def test_n_fgsm_steps_from_its_noise_without_projection():
    w = np.random.default_rng(2).normal(size=16)
    x = jnp.full((32, 16), 0.5, jnp.float32)
    y, key = jnp.zeros(32, jnp.int32), jax.random.key(4)
    x_adv = _jit(n_fgsm, _linear(w))(x, y, key, eps=EPS)
    # the same noise, redrawn: eta ~ U(-2 eps, 2 eps) clipped to the bounds, then + eps sign(w)
    eta = clip_to_bounds(x + random_init(key, x, 2 * EPS, "linf"), (0.0, 1.0)) - x
    want = clip_to_bounds(x + eta + EPS * jnp.sign(jnp.asarray(w, jnp.float32)), (0.0, 1.0))
    np.testing.assert_allclose(np.asarray(x_adv), np.asarray(want), atol=1e-7)
    delta = np.abs(np.asarray(x_adv - x))
    assert delta.max() <= 3 * EPS + 1e-6 and delta.max() > 2.5 * EPS  # beyond the eps-ball
    assert (delta > EPS + 1e-6).mean() > 0.3


def test_n_fgsm_stays_in_the_bounds_and_its_norm_budget():
    logits_fn = attack_models.model("softmax3")
    x = jnp.asarray(attack_models.data(1))
    x = x.at[:4].set(jnp.round(x[:4]))  # examples on the corners of [0, 1]^D
    y = jnp.asarray(attack_models.labels("softmax3", np.asarray(x)))
    for norm, eps in (("linf", 0.2), ("l2", 0.5)):
        x_adv = _jit(n_fgsm, logits_fn, norm=norm)(x, y, jax.random.key(1), eps=eps)
        assert np.all((np.asarray(x_adv) >= 0) & (np.asarray(x_adv) <= 1))
        assert np.all(np.asarray(lp_norm(x_adv - x, norm)) <= 3 * eps + 1e-5)
    # k = 0: no noise, one unprojected step of eps from x (FGSM itself on a linear model)
    w = np.random.default_rng(5).normal(size=16)
    x = jnp.full((2, 16), 0.5, jnp.float32)
    no_noise = _jit(n_fgsm, _linear(w), noise_scale=0.0)
    x_adv = no_noise(x, jnp.zeros(2, jnp.int32), jax.random.key(0), eps=EPS)
    np.testing.assert_allclose(np.asarray(x_adv - x)[0], EPS * np.sign(w), atol=1e-7)


def test_registry_defaults_options_and_errors():
    rs = parse_attack("fgsm_rs:linf:8/255", default_steps=20)
    assert (rs.num_steps, rs.alpha, rs.noise_scale) == (1, 1.25, 1.0)
    assert rs.step_for(8 / 255) == pytest.approx(1.25 * 8 / 255)
    nf = parse_attack("n_fgsm:linf:8/255", default_steps=20)
    assert (nf.num_steps, nf.alpha, nf.noise_scale) == (1, 1.0, 2.0)
    assert nf.to_dict()["noise_scale"] == 2.0 and rs.to_dict()["alpha"] == 1.25
    # a spec's own fields override the attack's defaults
    spec = {"attack": "n_fgsm", "norm": "linf", "eps": 0.1, "noise_scale": 1.5, "alpha": 1.25}
    nf = parse_attack(spec, default_steps=1)
    assert (nf.alpha, nf.noise_scale) == (1.25, 1.5)
    with pytest.raises(SpecError, match="'pgd' in eval.attacks has no noise_scale; valid for"):
        parse_attack({"attack": "pgd", "eps": 0.1, "noise_scale": 2.0}, default_steps=5)
    with pytest.raises(SpecError, match="noise_scale=-1.0 .* out of range"):
        parse_attack({"attack": "n_fgsm", "eps": 0.1, "noise_scale": -1.0}, default_steps=1)
    assert ATTACKS["fgsm_rs"].fixed_steps == ATTACKS["n_fgsm"].fixed_steps == 1


def test_run_attack_traces_once_per_spec_and_matches_the_functions():
    logits_fn = attack_models.model("softmax3")
    traces = []

    @functools.partial(jax.jit, static_argnames="spec")
    def attack(x, y, key, *, spec):
        traces.append(spec.attack)
        return run_attack(spec, logits_fn, x, y, key)

    for name, direct in (("fgsm_rs", fgsm_rs), ("n_fgsm", n_fgsm)):
        spec = parse_attack(f"{name}:linf:0.05", default_steps=1)
        for seed in (0, 1):
            x = jnp.asarray(attack_models.data(seed))
            y = jnp.asarray(attack_models.labels("softmax3", np.asarray(x)))
            got = attack(x, y, jax.random.key(seed), spec=spec)
            want = _jit(direct, logits_fn)(x, y, jax.random.key(seed), eps=0.05)
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-6)
        assert traces.count(name) == 1
