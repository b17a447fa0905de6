"""APGD, Square and their registry entries on the fixed tiny models of attack_models.

Compiles dominate on CPU: each library call runs under one jit with eps traced, data are
numpy, and the checks are numpy.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from attack_models import B, D, labels, model, norms
from hypothesis import given, settings
from hypothesis import strategies as st

from arjax import attacks, losses
from arjax.attacks.apgd import apgd_checkpoints, top_k_targets
from arjax.attacks.objectives import targeted_dlr_objective, worst_label_margin
from arjax.attacks.square import square_p

KEY = jax.random.PRNGKey(0)


@functools.cache
def _jit_apgd(head: str, **static):
    f = model(head)
    return jax.jit(lambda x, y, k, e: attacks.apgd(f, x, y, k, eps=e, **static))


def _apgd(head, x, y, eps, **static):
    return np.asarray(_jit_apgd(head, **static)(x, y, KEY, jnp.broadcast_to(eps, (len(x),))))


@functools.cache
def _jit_square(head: str, **static):
    f = model(head)
    return jax.jit(lambda x, y, k, e: attacks.square(f, x, y, k, eps=e, **static))


def _robust_acc(head, x_adv, y):
    return float(np.mean(losses.predictions_correct(model(head)(x_adv), y)))


def test_checkpoints_follow_the_paper():
    # p = 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99 (Croce & Hein 2020, Sec. 3.2)
    assert apgd_checkpoints(100) == (22, 41, 57, 70, 80, 87, 93, 99)
    assert apgd_checkpoints(10) == (3, 5, 6, 7, 8, 9, 10)
    assert apgd_checkpoints(1) == (1,) and apgd_checkpoints(0) == ()


def test_square_p_schedule():
    p = [float(square_p(i, 10000, 0.8)) for i in (0, 10, 11, 50, 51, 8000, 9999)]
    assert p == pytest.approx([0.8, 0.8, 0.4, 0.4, 0.2, 0.8 / 256, 0.8 / 512])
    assert float(square_p(5, 100, 0.8)) == pytest.approx(0.8 / 8)  # it=500 of 10k


@pytest.mark.parametrize("head", ["softmax3", "binary", "multilabel"])
@pytest.mark.parametrize(("norm", "eps"), [("linf", 0.05), ("l2", 0.15)])
def test_apgd_at_least_as_strong_as_pgd(head, norm, eps):
    """Same budget (20 gradient steps, one random start); slack of one example (1/B)."""
    x = np.random.default_rng(1).uniform(size=(B, D)).astype(np.float32)
    y = labels(head, x)
    f = model(head)
    pgd = jax.jit(lambda x, y, k: attacks.pgd(f, x, y, k, eps=eps, num_steps=20, norm=norm))
    acc_pgd = _robust_acc(head, np.asarray(pgd(x, y, KEY)), y)
    acc_apgd = _robust_acc(head, _apgd(head, x, y, eps, num_steps=20, norm=norm), y)
    clean = _robust_acc(head, x, y)
    print(f"{head} {norm}: clean {clean:.3f} pgd {acc_pgd:.3f} apgd-ce {acc_apgd:.3f}")
    assert acc_apgd <= acc_pgd + 1.0 / B
    assert acc_apgd < clean  # it breaks something


@settings(max_examples=4, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    norm=st.sampled_from(["linf", "l2"]),
    loss=st.sampled_from(["ce", "dlr", "dlr-t"]),
)
def test_apgd_inside_ball_and_bounds(seed, norm, loss):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(B, D)).astype(np.float32)
    x[:4] = np.round(x[:4])  # corners of the box: clipping matters
    y = labels("softmax3", x)
    base = 0.1 if norm == "linf" else 0.5
    eps = rng.uniform(0, base, size=B).astype(np.float32)
    eps[0] = 0.0
    x_adv = _apgd("softmax3", x, y, eps, num_steps=8, norm=norm, loss=loss, num_targets=2)
    assert np.all(norms(x_adv - x, norm) <= eps + 1e-5)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0 and np.isfinite(x_adv).all()
    np.testing.assert_array_equal(x_adv[0], x[0])  # eps = 0
    assert norms(x_adv - x, norm).max() > 0.3 * eps.max()


def test_apgd_traces_once_for_two_radii():
    f = model("softmax3")
    traces = []

    def run(x, y, k, e):
        traces.append(1)
        return attacks.apgd(f, x, y, k, eps=e, num_steps=5, loss="dlr")

    jitted = jax.jit(run)
    x = np.random.default_rng(2).uniform(size=(B, D)).astype(np.float32)
    y = labels("softmax3", x)
    a = jitted(x, y, KEY, jnp.full((B,), 0.01))
    b = jitted(x, y, KEY, jnp.full((B,), 0.1))
    assert len(traces) == 1
    assert norms(np.asarray(b) - x, "linf").max() > norms(np.asarray(a) - x, "linf").max()


@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr-t", "margin", "margin-t"])
@pytest.mark.parametrize("head", ["softmax2", "binary", "binary1", "multilabel"])
def test_few_class_heads_finite(head, loss):
    """The DLR fallbacks (margins) on heads with fewer classes than DLR needs: no NaN."""
    x = np.random.default_rng(3).uniform(size=(B, D)).astype(np.float32)
    y = labels(head, x)
    x_adv = _apgd(head, x, y, 0.1, num_steps=4, loss=loss)
    assert np.isfinite(x_adv).all() and np.all(norms(x_adv - x, "linf") <= 0.1 + 1e-6)
    assert _robust_acc(head, x_adv, y) < _robust_acc(head, x, y)


def test_dlr_objectives_signs_and_fallbacks():
    rng = np.random.default_rng(4)
    for k in (2, 3, 4, 6):
        z = rng.normal(size=(64, k)).astype(np.float32)
        y = rng.integers(0, k, 64).astype(np.int32)
        wrong = ~np.asarray(losses.predictions_correct(z, y))
        dlr = np.asarray(attacks.dlr_objective(z, y))
        np.testing.assert_array_equal(dlr > 0, wrong)
        t = np.asarray(top_k_targets(z, y, 1))[0]
        assert np.all(t != y)
        tdlr = np.asarray(targeted_dlr_objective(z, y, t))
        np.testing.assert_array_equal(tdlr > 0, z[np.arange(64), t] > z[np.arange(64), y])
        # shift / scale invariance where the ratio is defined
        if k >= 3:
            np.testing.assert_allclose(attacks.dlr_objective(3 * z + 1, y), dlr, rtol=1e-4)
    # all-equal logits: finite value and gradient
    z = np.zeros((4, 5), np.float32)
    y = np.zeros(4, np.int32)
    g = jax.grad(lambda z: targeted_dlr_objective(z, y, y + 1).sum())(z)
    assert np.isfinite(np.asarray(g)).all()
    zm = rng.normal(size=(8, 3)).astype(np.float32)
    ym = (rng.uniform(size=(8, 3)) > 0.5).astype(np.float32)
    margin = np.asarray(worst_label_margin(zm, ym))
    np.testing.assert_array_equal(margin > 0, ~np.asarray(losses.predictions_correct(zm, ym)))


def test_top_k_targets_are_the_highest_other_classes():
    z = np.array([[0.0, 3.0, 1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(top_k_targets(z, np.array([1]), 3)[:, 0], [3, 2, 0])


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("shape", [(B, D), (8, 10, 10, 3)])
def test_square_inside_ball_bounds_per_sample(norm, shape):
    rng = np.random.default_rng(5)
    x = rng.uniform(size=shape).astype(np.float32)
    n = shape[0]
    if len(shape) == 2:
        head = "softmax3"
        f = model(head)
    else:
        w = rng.normal(size=(int(np.prod(shape[1:])), 3)).astype(np.float32) / 4
        f = jax.jit(lambda z: (z.reshape(z.shape[0], -1) - 0.5) @ w)
    z = np.asarray(f(x))
    y = np.argmax(z, -1).astype(np.int32)
    base = 0.1 if norm == "linf" else 1.0
    eps = np.linspace(0.0, base, n, dtype=np.float32)
    run = jax.jit(lambda x, y, k, e: attacks.square(f, x, y, k, eps=e, num_queries=60, norm=norm))
    x_adv = np.asarray(run(x, y, KEY, eps))
    assert x_adv.shape == x.shape and np.isfinite(x_adv).all()
    assert np.all(norms(x_adv - x, norm) <= eps + 1e-5)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    np.testing.assert_array_equal(x_adv[0], x[0])
    assert norms(x_adv - x, norm)[-1] > 0.5 * base
    correct = np.asarray(losses.predictions_correct(f(x_adv), y))
    assert correct.mean() < 1.0


def test_square_breaks_examples_without_gradients():
    x = np.random.default_rng(6).uniform(size=(B, D)).astype(np.float32)
    y = labels("softmax3", x)
    run = _jit_square("softmax3", num_queries=200, norm="linf")
    x_adv = np.asarray(run(x, y, KEY, jnp.full((B,), 0.1)))
    assert _robust_acc("softmax3", x_adv, y) < _robust_acc("softmax3", x, y) - 0.1


REGISTERED = ["apgd-ce", "apgd-dlr", "apgd-t", "square", "autoattack", "autoattack-fast"]


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_run_attack_specs(name, norm):
    spec = attacks.parse_attack(f"{name}:{norm}:0.1:4", default_steps=100)
    assert spec.loss == attacks.ATTACKS[name].losses[0]
    assert attacks.ATTACKS["square"].gradient_free and not attacks.ATTACKS[name].fixed_steps
    f = model("softmax3")
    x = np.random.default_rng(7).uniform(size=(B, D)).astype(np.float32)
    y = labels("softmax3", x)
    run = jax.jit(lambda x, y, k, e: attacks.run_attack(spec, f, x, y, k, eps=e))
    eps = np.full(B, 0.1, np.float32)
    x_adv = np.asarray(run(x, y, KEY, eps))
    assert np.all(norms(x_adv - x, norm) <= 0.1 + 1e-5)
    assert x_adv.min() >= 0.0 and x_adv.max() <= 1.0
    assert _robust_acc("softmax3", x_adv, y) < _robust_acc("softmax3", x, y)


def test_spec_strings_and_loss_validation():
    spec = attacks.parse_attack("autoattack:linf:8/255", default_steps=100)
    assert spec.eps == pytest.approx(8 / 255) and spec.num_steps == 100
    assert attacks.parse_attack("apgd-ce:l2:0.5", default_steps=100).name == "apgd-ce100_l2_0.5"
    sq = attacks.parse_attack("square:linf:0.03:5000", default_steps=100)
    assert sq.num_steps == 5000 and sq.loss == "margin"
    assert attacks.parse_attack("pgd:linf:0.1", default_steps=5).loss == "ce"
    with pytest.raises(attacks.SpecError, match="has no loss 'ce'; valid: dlr"):
        attacks.parse_attack({"attack": "apgd-dlr", "eps": 0.1, "loss": "ce"}, default_steps=5)
    bad = attacks.AttackSpec("apgd-dlr", "linf", 0.1, 5)  # dataclass default loss "ce"
    with pytest.raises(attacks.SpecError, match="no loss"):
        attacks.run_attack(bad, model("softmax3"), np.zeros((2, D)), np.zeros(2, int), KEY)
