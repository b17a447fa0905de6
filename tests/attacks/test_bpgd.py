"""BPGD (IMA Alg. 3) on linear models, where the boundary distance is known, and a tanh MLP.

Linear softmax logits ``z @ W + b`` have the boundary ``w . z + c = 0`` with ``w`` the
difference of the two class rows; its distance from ``x`` is ``|w . x + c| / ||w||_2`` in l2
and ``/ ||w||_1`` in l-inf. From ``x`` without a random start PGD walks straight towards it
(direction ``w`` or ``sign(w)``), so bisection must land on that nearest point.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from arjax import attacks, losses

B, D = 32, 5
KEY = jax.random.PRNGKey(0)
RNG = np.random.default_rng(0)
W = RNG.normal(size=(D, 2)).astype(np.float32)
BIAS = np.array([0.1, -0.2], np.float32)
X = RNG.normal(size=(B, D)).astype(np.float32)
W_DIFF = W[:, 1] - W[:, 0]
C_DIFF = BIAS[1] - BIAS[0]
MARGIN = X @ W_DIFF + C_DIFF  # > 0 where class 1 is predicted
Y = (MARGIN > 0).astype(np.int32)


def _softmax_fn(z):
    return z @ W + BIAS


def _binary_fn(z):
    return z @ W_DIFF + C_DIFF


def _analytic(norm):
    return np.abs(MARGIN) / (np.abs(W_DIFF).sum() if norm == "linf" else np.linalg.norm(W_DIFF))


def _norms(delta, norm):
    flat = np.asarray(delta).reshape(len(delta), -1)
    return np.abs(flat).max(1) if norm == "linf" else np.linalg.norm(flat, axis=1)


def _bpgd(f, x, y, eps, key=KEY, **static):
    """`bpgd` under one jit with `eps` traced; numpy results."""
    run = jax.jit(lambda x, y, key, eps: attacks.bpgd(f, x, y, key, eps=eps, **static))
    return jax.tree.map(np.asarray, run(x, y, key, eps))


@pytest.mark.parametrize(
    ("norm", "bracket"),
    [
        ("linf", "clean_to_last_wrong"),
        ("l2", "clean_to_last_wrong"),
        ("linf", "recorded"),
        ("l2", "recorded"),
        ("linf", "clean_to_last"),
    ],
)
def test_linear_distance_is_analytic(norm, bracket):
    dist = _analytic(norm)
    big = np.arange(B) % 2 == 0
    eps = np.where(big, 1.5 * dist, 0.8 * dist).astype(np.float32)
    y = Y.copy()
    flipped = np.arange(B) % 8 == 1  # misclassified at x: bracket [x, x]
    y[flipped] = 1 - y[flipped]
    static = dict(norm=norm, random_start=False, bounds=None, bracket=bracket)

    @jax.jit
    def run(x, y, eps):  # both heads: softmax [B, 2] and one binary logit [B]
        found = [attacks.bpgd(f, x, y, eps=eps, **static) for f in (_softmax_fn, _binary_fn)]
        # the caller's clean logits replace the check of x in the first PGD pass
        given = attacks.bpgd(_softmax_fn, x, y, eps=eps, clean_logits=_softmax_fn(x), **static)
        # 4 steps of eps / 4 with eps = 1.05 x distance: only the last iterate crosses
        last = attacks.bpgd(
            _softmax_fn, x, y, eps=eps / 1.5 * 1.05, num_steps=4, alpha=1.0, **static
        )
        return found, given, last

    found, given, last = jax.tree.map(np.asarray, run(X, y, eps))
    np.testing.assert_array_equal(given.images, found[0].images)
    np.testing.assert_array_equal(given.crossed, found[0].crossed)
    for r in [*found, last]:
        np.testing.assert_array_equal(r.crossed, big | flipped)
        np.testing.assert_allclose(r.distance[big], dist[big], rtol=0.01)
        np.testing.assert_allclose(_norms(r.images - X, norm)[big], r.distance[big], rtol=1e-5)
        rest = ~big
        np.testing.assert_array_equal(r.images[rest], X[rest])
        np.testing.assert_array_equal(r.distance[rest], 0.0)
        assert np.all(np.isfinite(r.images))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_lands_on_boundary(norm):
    dist = _analytic(norm)
    eps = (1.5 * dist).astype(np.float32)
    r = _bpgd(_softmax_fn, X, Y, eps, norm=norm, bounds=None)
    assert r.crossed.all()
    # on the boundary hyperplane, whatever the path: |w.p + c| tiny against |w.x + c|.
    assert np.max(np.abs(r.images @ W_DIFF + C_DIFF) / np.abs(MARGIN)) < 2e-3
    # never closer than the nearest boundary point (up to the midpoint's half of the last
    # bracket, eps / 2^11 on the segment from x), never outside the ball.
    assert np.all(r.distance >= dist - eps / 2**11 - 1e-6)
    assert np.all(r.distance <= eps * (1 + 1e-5))


def _mlp_params():
    rng = np.random.default_rng(1)
    return (
        rng.normal(size=(D, 16)).astype(np.float32) * 2.0,
        rng.normal(size=16).astype(np.float32),
        rng.normal(size=(16, 3)).astype(np.float32),
    )


def _mlp(z):
    w1, b1, w2 = _mlp_params()
    return jnp.tanh(z @ w1 + b1) @ w2


def _mlp_data():
    x = np.random.default_rng(2).uniform(size=(B, D)).astype(np.float32)
    y = np.asarray(jnp.argmax(_mlp(x), -1)).astype(np.int32)
    y[:3] = (y[:3] + 1) % 3  # three misclassified at x
    return x, y


@jax.jit
def _mlp_correct(images, y):
    return losses.predictions_correct(_mlp(images), y)


@pytest.mark.parametrize(("norm", "loss"), [("linf", "ce"), ("l2", "margin")])
def test_bracket_is_the_first_crossing(norm, loss):
    """With no bisection the sides are the recorded PGD iterates x_n1 and x_n2."""
    x, y = _mlp_data()
    n = 5
    eps = np.linspace(0.02, 0.3 if norm == "linf" else 0.8, B).astype(np.float32)
    step = (4.0 * eps / n).astype(np.float32)
    kw = dict(step_size=step, norm=norm, loss=loss, random_start=False)

    @jax.jit
    def run(x, y, eps):
        seq = [attacks.pgd(_mlp, x, y, eps=eps, num_steps=t, **kw) for t in range(n + 1)]
        sides = [
            attacks.bpgd(
                _mlp,
                x,
                y,
                eps=eps,
                num_steps=n,
                num_bisections=0,
                side=side,
                bracket="recorded",
                **kw,
            )
            for side in ("correct", "wrong")
        ]
        return jnp.stack(seq), sides

    seq, (a, b) = jax.tree.map(np.asarray, run(x, y, eps))  # seq[t]: iterate t, t = 0..n
    correct = np.stack([np.asarray(_mlp_correct(s, y)) for s in seq])
    crossed = ~correct.all(axis=0)
    np.testing.assert_array_equal(a.crossed, crossed)
    np.testing.assert_array_equal(b.crossed, crossed)
    assert 3 < crossed.sum() < B - 3
    first = np.argmax(~correct, axis=0)
    for i in np.flatnonzero(crossed):
        t = first[i]
        np.testing.assert_allclose(b.images[i], seq[t, i], atol=1e-6)
        np.testing.assert_allclose(a.images[i], seq[max(t - 1, 0), i], atol=1e-6)
    np.testing.assert_array_equal(a.images[:3], x[:3])  # clean-misclassified: [x, x]
    np.testing.assert_array_equal(b.images[:3], x[:3])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_default_bracket_is_clean_to_the_last_misclassified_iterate(norm):
    """Without bisection the default bracket's ends are x and the last wrong PGD iterate."""
    x, y = _mlp_data()
    n = 5
    eps = np.linspace(0.02, 0.3 if norm == "linf" else 0.8, B).astype(np.float32)
    kw = dict(step_size=(4.0 * eps / n).astype(np.float32), norm=norm, random_start=False)

    @jax.jit
    def run(x, y, eps):
        seq = [attacks.pgd(_mlp, x, y, eps=eps, num_steps=t, **kw) for t in range(n + 1)]
        sides = [
            attacks.bpgd(_mlp, x, y, eps=eps, num_steps=n, num_bisections=0, side=side, **kw)
            for side in ("correct", "wrong")
        ]
        return jnp.stack(seq), sides

    seq, (a, b) = jax.tree.map(np.asarray, run(x, y, eps))
    wrong = ~np.stack([np.asarray(_mlp_correct(s, y)) for s in seq])
    crossed = wrong.any(axis=0)
    np.testing.assert_array_equal(b.crossed, crossed)
    assert 3 < crossed.sum() < B - 3
    last = n - np.argmax(wrong[::-1], axis=0)
    for i in np.flatnonzero(crossed)[3:]:  # rows 0..2: misclassified at x, [x, x]
        np.testing.assert_allclose(b.images[i], seq[last[i], i], atol=1e-6)
    np.testing.assert_array_equal(a.images, x)  # the correct end is x itself
    np.testing.assert_array_equal(b.images[:3], x[:3])


def test_a_crossing_pgd_wandered_back_from_still_counts():
    # logit 0.5 + cos(6 v) (class 1 where > 0), x = 0.3: PGD steps of 0.35 jump to 0.65
    # (misclassified) and back to 0.3, so the last iterate is correct again. The default
    # bracket keeps the crossing (Alg. 3: some iterate is misclassified) and bisects on
    # [0.3, 0.65] onto the boundary cos(6 v) = -0.5 at v = pi / 9; clean_to_last drops it.
    def f(v):
        return 0.5 + jnp.cos(6.0 * v[:, 0])

    x, y = jnp.array([[0.3]]), jnp.array([1])
    kw = dict(eps=2.0, num_steps=6, step_size=0.35, random_start=False, bounds=None)
    found = attacks.bpgd(f, x, y, **kw)
    assert bool(found.crossed[0])
    assert float(found.images[0, 0]) == pytest.approx(np.pi / 9, abs=1e-3)
    assert float(found.distance[0]) == pytest.approx(np.pi / 9 - 0.3, abs=1e-3)
    assert not bool(attacks.bpgd(f, x, y, bracket="clean_to_last", **kw).crossed[0])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_sides_bisection_ball_and_bounds(norm):
    x, y = _mlp_data()
    nb = 10
    eps = np.linspace(0.0, 0.2 if norm == "linf" else 0.5, B).astype(np.float32)

    @jax.jit
    def run(x, y, key, eps):
        kw = dict(eps=eps, num_bisections=nb, norm=norm)
        sides = [
            attacks.bpgd(_mlp, x, y, random_start=False, side=side, bracket="recorded", **kw)
            for side in ("correct", "wrong", "middle")
        ]
        return sides, attacks.bpgd(_mlp, x, y, key, **kw)  # and one with a random start

    (a, b, m), r = jax.tree.map(np.asarray, run(x, y, KEY, eps))
    crossed = a.crossed
    assert 3 < crossed.sum() < B - 3
    np.testing.assert_array_equal(b.crossed, crossed)
    assert np.all(_mlp_correct(a.images, y)[crossed][3:])  # rows 0..2: clean-misclassified
    assert not np.any(_mlp_correct(b.images, y)[crossed])
    gap = _norms(a.images - b.images, norm)
    assert np.all(gap <= 4.0 * eps / 20 / 2**nb + 1e-6)  # an adjacent pair, halved nb times
    np.testing.assert_allclose(m.images, (a.images + b.images) / 2, atol=1e-6)
    for res in (a, b, m, r):
        assert np.all(_norms(res.images - x, norm) <= eps + 1e-5)
        assert res.images.min() >= 0.0 and res.images.max() <= 1.0
        np.testing.assert_array_equal(res.images[~res.crossed], x[~res.crossed])
        np.testing.assert_array_equal(res.distance[~res.crossed], 0.0)
        np.testing.assert_allclose(res.distance, _norms(res.images - x, norm), atol=1e-6)
    assert 3 < r.crossed.sum() < B
    assert r.crossed[:3].all() and np.all(r.distance[:3] == 0)  # clean-misclassified: [x, x]


def test_jit_traces_once_and_no_nan_at_extremes():
    traces = []

    def counting_fn(z):
        traces.append(1)
        return _softmax_fn(z)

    attack = jax.jit(
        functools.partial(attacks.bpgd, counting_fn, num_steps=4, norm="l2", bounds=None)
    )
    none = jax.tree.map(np.asarray, attack(X, Y, KEY, eps=jnp.zeros(B)))
    n_first = len(traces)
    every = jax.tree.map(np.asarray, attack(X, Y, KEY, eps=jnp.asarray(10 * _analytic("l2"))))
    assert n_first >= 1 and len(traces) == n_first
    assert not none.crossed.any() and every.crossed.all()
    np.testing.assert_array_equal(none.images, X)
    np.testing.assert_array_equal(none.distance, 0.0)
    for r in (none, every):
        assert np.all(np.isfinite(r.images)) and np.all(np.isfinite(r.distance))
    assert np.all(every.distance > 0)


def test_argument_errors():
    with pytest.raises(ValueError, match="clean_to_last_wrong, recorded, clean_to_last"):
        attacks.bpgd(_softmax_fn, X, Y, KEY, eps=0.1, bracket="last")
    with pytest.raises(ValueError, match="middle, correct, wrong"):
        attacks.bpgd(_softmax_fn, X, Y, KEY, eps=0.1, side="left")
    with pytest.raises(ValueError, match="ce, margin"):
        attacks.bpgd(_softmax_fn, X, Y, KEY, eps=0.1, loss="kl")
    with pytest.raises(ValueError, match="num_bisections"):
        attacks.bpgd(_softmax_fn, X, Y, KEY, eps=0.1, num_bisections=2.0)
    with pytest.raises(ValueError, match="PRNG key"):
        attacks.bpgd(_softmax_fn, X, Y, eps=0.1)
