"""Expectation over Transformation: one draw is the plain attack, n draws average, rand AA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attack_models import data, labels, model, norms

from arjax import attacks, losses
from arjax.attacks.ensemble import autoattack_members
from arjax.attacks.eot import EOT_TAG, RandomizedModel, expectation
from arjax.evaluation.autoattack_eval import autoattack

KEY = jax.random.PRNGKey(3)


def _same_model(head="softmax3"):
    f = model(head)
    return f, RandomizedModel(lambda z, key: f(z))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_one_draw_equals_the_plain_attack_exactly(norm):
    f, r = _same_model()
    x = data(0)
    y = labels("softmax3", x)
    kw = dict(eps=0.1, norm=norm)
    plain = jax.jit(lambda x, y, k: attacks.pgd(f, x, y, k, num_steps=5, **kw))(x, y, KEY)
    one = jax.jit(lambda x, y, k: attacks.pgd(r, x, y, k, num_steps=5, eot=1, **kw))(x, y, KEY)
    np.testing.assert_array_equal(np.asarray(one), np.asarray(plain))
    opts = dict(num_steps=8, loss="dlr-t", num_targets=2, **kw)
    a = jax.jit(lambda x, y, k: attacks.apgd(f, x, y, k, **opts))(x, y, KEY)
    b = jax.jit(lambda x, y, k: attacks.apgd(r, x, y, k, eot=1, **opts))(x, y, KEY)
    np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    # on a deterministic logits_fn n draws are the same gradient: computed once, same result
    many = jax.jit(lambda x, y, k: attacks.pgd(f, x, y, k, num_steps=5, eot=7, **kw))(x, y, KEY)
    np.testing.assert_array_equal(np.asarray(many), np.asarray(plain))


def test_expectation_averages_the_draws_with_derived_keys():
    """A linear model with a random weight per draw: the EoT gradient is the mean weight."""
    w = np.arange(1.0, 5.0, dtype=np.float32)

    def noisy(z, key):
        return z @ (w + jax.random.normal(key, (4,)))

    grad_of = expectation(lambda f: jax.grad(lambda z: jnp.sum(f(z))), RandomizedModel(noisy),
                          KEY, 5)  # fmt: skip
    z = np.ones((2, 4), np.float32)
    got = np.asarray(jax.jit(grad_of)(z, 3))
    step = jax.random.fold_in(jax.random.fold_in(KEY, EOT_TAG), 3)
    draws = [w + np.asarray(jax.random.normal(jax.random.fold_in(step, j), (4,))) for j in range(5)]
    np.testing.assert_allclose(got, np.broadcast_to(np.mean(draws, 0), (2, 4)), rtol=1e-5)
    other = np.asarray(jax.jit(grad_of)(z, 4))  # another iteration, other draws
    assert not np.allclose(other, got)


def test_more_draws_beat_a_noisy_gradient():
    """Noise as large as the signal on every draw's weights: 20 draws find the direction."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=16).astype(np.float32)
    x = rng.uniform(0.3, 0.7, size=(64, 16)).astype(np.float32)
    mean = lambda z: (z - 0.5) @ w  # noqa: E731
    y = (np.asarray(mean(x)) > 0).astype(np.int32)
    randomized = RandomizedModel(
        lambda z, k: (z - 0.5) @ (w + np.linalg.norm(w) * jax.random.normal(k, (16,)))
    )
    eps = 1.05 * float(np.quantile(np.abs(np.asarray(mean(x))) / np.linalg.norm(w), 0.8))
    acc = {}
    for n in (1, 20):
        attack = jax.jit(lambda x, y, k, n=n: attacks.pgd(
            randomized, x, y, k, eps=eps, num_steps=10, norm="l2", eot=n))  # fmt: skip
        acc[n] = np.mean([
            np.mean(np.asarray(losses.predictions_correct(mean(attack(x, y, k)), y)))
            for k in jax.random.split(KEY, 4)
        ])  # fmt: skip
    print(acc)  # measured over 8 keys: {1: 0.52, 20: 0.33}; the exact direction gets 0.2
    assert acc[20] < acc[1] - 0.08


def test_rand_version_on_a_randomized_model():
    f = model("softmax5")
    x = data(2)
    y = labels("softmax5", x)
    r = RandomizedModel(lambda z, k: f(z + 0.02 * jax.random.normal(k, z.shape)))
    members = autoattack_members("rand", num_steps=5)
    assert [(m.name, m.loss, m.eot, m.restarts) for m in members] == [
        ("apgd-ce", "ce", 20, 1), ("apgd-dlr", "dlr", 20, 1)
    ]  # fmt: skip
    small = autoattack_members("rand", num_steps=4, eot=3)
    res = autoattack(r, x, y, KEY, 0.1, "linf", members=small)
    assert res.attacks == ("apgd-ce", "apgd-dlr")
    assert np.all(norms(res.x_adv - x, "linf") <= 0.1 + 1e-6)
    assert res.robust_accuracy < res.clean_accuracy
    # broken means misclassified by the one fixed draw that judges the ensemble
    judge = attacks.eot.fixed_draw(r, KEY)
    still = np.asarray(losses.predictions_correct(judge(res.x_adv), y))
    np.testing.assert_array_equal(res.final_robust, still & res.clean_correct)


def test_spec_field_and_errors():
    spec = attacks.parse_attack({"attack": "apgd-ce", "eps": 0.1, "eot": 4}, default_steps=6)
    assert spec.name == "apgd-ce6_linf_0.1_eot4" and spec.to_dict()["eot"] == 4
    assert "eot" not in attacks.parse_attack("pgd:linf:0.1", default_steps=6).to_dict()
    with pytest.raises(attacks.SpecError, match="eot=3 .* only for apgd-ce, apgd-dlr, apgd-t"):
        attacks.parse_attack({"attack": "square", "eps": 0.1, "eot": 3}, default_steps=6)
    f, r = _same_model()
    x = data(0)
    y = labels("softmax3", x)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        attacks.pgd(r, x, y, None, eps=0.1, random_start=False)
    with pytest.raises(ValueError, match="eot must be a python int >= 1"):
        attacks.pgd(f, x, y, KEY, eps=0.1, eot=0)
    with pytest.raises(ValueError, match="RandomizedModel with pgd"):
        attacks.fab(r, x, y)
