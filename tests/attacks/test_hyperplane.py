"""FAB's box-constrained projection onto a hyperplane against scipy's LP / QP solvers."""

import numpy as np
import pytest
from scipy.optimize import linprog, minimize

from arjax.attacks.hyperplane import hyperplane_step

B, D = 12, 6
ORD = {"linf": np.inf, "l2": 2, "l1": 1}


def _problem(seed):
    rng = np.random.default_rng(seed)
    t = rng.uniform(size=(B, D)).astype(np.float32)
    w = rng.normal(size=(B, D)).astype(np.float32)
    w[0, 2] = w[1, :3] = 0.0  # zero normal entries never move
    c = (rng.normal(size=B) * 0.8).astype(np.float32)
    c[2] = 0.0  # already on the hyperplane
    c[3] = 50.0  # the hyperplane misses the box
    return t, w, c


def _reference(t, w, c, norm):
    """min ||d||_p s.t. <w, d> = -c, 0 <= t + d <= 1, by scipy (None if infeasible)."""
    box = list(zip(-t, 1.0 - t, strict=True))
    if norm == "l2":
        start = np.clip(-c * w / (w @ w), -t, 1.0 - t)
        res = minimize(lambda d: d @ d, start, jac=lambda d: 2 * d, method="SLSQP",
                       bounds=box, options=dict(ftol=1e-15, maxiter=500),
                       constraints=[{"type": "eq", "fun": lambda d: w @ d + c}])  # fmt: skip
        return res.x if res.success and abs(w @ res.x + c) < 1e-6 else None
    if norm == "linf":  # variables (d, s): min s, -s <= d_i <= s
        cost = np.r_[np.zeros(D), 1.0]
        a_ub = np.block([[np.eye(D), -np.ones((D, 1))], [-np.eye(D), -np.ones((D, 1))]])
        res = linprog(cost, A_ub=a_ub, b_ub=np.zeros(2 * D), A_eq=np.r_[w, 0.0][None],
                      b_eq=[-c], bounds=box + [(0, None)])  # fmt: skip
        return res.x[:D] if res.status == 0 else None
    # l1: d = p - n with 0 <= p <= 1 - t, 0 <= n <= t
    res = linprog(np.ones(2 * D), A_eq=np.r_[w, -w][None], b_eq=[-c],
                  bounds=[(0, h) for h in 1.0 - t] + [(0, h) for h in t])  # fmt: skip
    return res.x[:D] - res.x[D:] if res.status == 0 else None


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_matches_scipy_in_the_box(norm):
    t, w, c = _problem(seed={"linf": 0, "l2": 1, "l1": 2}[norm])
    d = np.asarray(hyperplane_step(t, w, c, norm, (0.0, 1.0)))
    end = t + d
    assert end.min() >= -1e-6 and end.max() <= 1 + 1e-6
    assert np.all(d[w == 0] == 0)
    np.testing.assert_array_equal(d[2], 0.0)
    toward = np.where(w * np.sign(c)[:, None] > 0, -t, 1.0 - t)  # the bound each coordinate
    reach = np.sum(w * toward, axis=1)  # ... moves to, and how far <w, d> can then go
    feasible = np.abs(reach) >= np.abs(c)
    assert not feasible[3] and feasible.sum() >= B - 3
    for i in range(B):
        if not feasible[i]:  # the hyperplane misses the box: every movable coordinate saturates
            np.testing.assert_allclose(d[i][w[i] != 0], toward[i][w[i] != 0], atol=1e-6)
            continue
        ref = _reference(t[i].astype(np.float64), w[i].astype(np.float64), float(c[i]), norm)
        assert ref is not None, i
        assert abs(w[i] @ d[i] + c[i]) < 1e-5  # on the hyperplane
        np.testing.assert_allclose(
            np.linalg.norm(d[i], ORD[norm]), np.linalg.norm(ref, ORD[norm]), rtol=1e-5, atol=1e-7
        )


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
def test_closed_forms_without_bounds(norm):
    t, w, c = _problem(seed=3)
    d = np.asarray(hyperplane_step(t, w, c, norm, None))
    q = {"linf": 1, "l2": 2, "l1": np.inf}[norm]
    for i in range(B):
        if not np.any(w[i]):
            continue
        np.testing.assert_allclose(w[i] @ d[i], -c[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(  # Hölder: the smallest norm that removes |c|
            np.linalg.norm(d[i], ORD[norm]), abs(c[i]) / np.linalg.norm(w[i], q), rtol=1e-5
        )
    assert np.count_nonzero(d[4]) == (1 if norm == "l1" else D)
