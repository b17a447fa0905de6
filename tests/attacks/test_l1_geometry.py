"""l1 geometry: norm, dual norms, the l1-ball projection (Duchi et al. 2008), random starts."""

import jax
import numpy as np
import pytest

from arjax.attacks import geometry


def _project_reference(v: np.ndarray, eps: float) -> np.ndarray:
    """Euclidean projection onto the l1 ball by bisection on the threshold (float64)."""
    if np.abs(v).sum() <= eps:
        return v
    lo, hi = 0.0, np.abs(v).max()
    for _ in range(200):
        theta = 0.5 * (lo + hi)
        lo, hi = (theta, hi) if np.maximum(np.abs(v) - theta, 0).sum() > eps else (lo, theta)
    return np.sign(v) * np.maximum(np.abs(v) - 0.5 * (lo + hi), 0)


def test_norms_and_duals():
    v = np.random.default_rng(0).normal(size=(5, 3, 4)).astype(np.float32)
    flat = v.reshape(5, -1)
    np.testing.assert_allclose(geometry.lp_norm(v, "l1"), np.abs(flat).sum(1), rtol=1e-6)
    for norm, ref in (("linf", np.abs(flat).sum(1)), ("l2", np.linalg.norm(flat, axis=1)),
                      ("l1", np.abs(flat).max(1))):  # fmt: skip
        np.testing.assert_allclose(geometry.dual_norm(v, norm), ref, rtol=1e-6)
    with pytest.raises(ValueError, match="valid choices: linf, l2, l1"):
        geometry.lp_norm(v, "l3")
    with pytest.raises(ValueError, match="valid choices: linf, l2\\.$"):
        geometry.step_direction(v, "l1")  # the fixed-radius attacks' norms only


def test_project_l1_matches_the_bisection_reference():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(6, 10)).astype(np.float32)
    v[1] *= 0.01  # already inside
    eps = np.array([0.5, 1.0, 2.0, 0.0, np.inf, 3.0], np.float32)
    p = np.asarray(geometry.project(v, eps, "l1"))
    for i in range(6):
        if np.isinf(eps[i]):
            np.testing.assert_array_equal(p[i], v[i])
            continue
        np.testing.assert_allclose(p[i], _project_reference(v[i].astype(np.float64), eps[i]),
                                   atol=2e-6)  # fmt: skip
    np.testing.assert_array_equal(p[1], v[1])
    np.testing.assert_array_equal(p[3], 0.0)
    norms = np.abs(p).sum(1)
    outside = np.abs(v).sum(1) > eps
    np.testing.assert_allclose(norms[outside], eps[outside], rtol=1e-5)
    assert np.all(np.sign(p) * np.sign(v) >= 0)  # never flips a sign


def test_project_l1_is_idempotent_and_jits_with_traced_radius():
    v = np.random.default_rng(2).normal(size=(4, 3, 3)).astype(np.float32)
    once = jax.jit(lambda v, e: geometry.project(v, e, "l1"))(v, np.float32(1.5))
    twice = geometry.project(once, 1.5, "l1")
    np.testing.assert_allclose(twice, once, atol=1e-6)
    assert once.shape == v.shape


def test_random_init_l1_is_uniform_in_the_ball():
    """Inside the ball; ``||delta||_1 / eps ~ u^(1/d)``, so its mean is ``d / (d + 1)``."""
    x = np.zeros((4000, 3), np.float32)
    delta = np.asarray(geometry.random_init(jax.random.PRNGKey(0), x, 2.0, "l1"))
    r = np.abs(delta).sum(1) / 2.0
    assert r.max() <= 1.0 + 1e-6
    assert abs(r.mean() - 0.75) < 0.02
    # uniform in the ball: a coordinate's mean |delta_i| is eps / (d + 1) = 0.5
    np.testing.assert_allclose(np.abs(delta).mean(0), 0.5, atol=0.03)
    assert abs(np.mean(delta > 0) - 0.5) < 0.02
