"""IMA loss (Alg. 1) and margin update (Alg. 2) on a linear model checked by hand.

For ``logit = w.x + b`` the l-inf distance of x to the boundary is
``|w.x + b| / ||w||_1``; BPGD without random start crosses exactly when the
margin exceeds it, and its boundary point has logit ~ 0, i.e. CE ~ log 2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import linear_model

from arjax import attacks, margins, methods
from arjax.experiment.presets import method_config
from arjax.models import split_model

W = np.array([1.0, -2.0], np.float32)
B = 0.1
X = np.array([[0.3, 0.1], [-0.4, 0.2], [0.9, -0.7], [0.05, 0.6], [0.2, 0.2]], np.float32)
Y = np.array([1, 0, 0, 0, 0], np.int32)  # example 2 (logit 2.4) is misclassified
Z = X @ W + B
DIST = np.abs(Z) / np.abs(W).sum()


def bce(z, y):
    p = 1 / (1 + np.exp(-z))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def ima_loss(eps, beta=0.5, **fields):
    model, params, stats = linear_model(W, B)
    cfg = method_config(
        "ima",
        beta=beta,
        eps_max=1.0,
        delta=0.01,
        random_start=False,
        margin_update="batch",
        **fields,
    )
    loss_fn = methods.make_loss(cfg, model, None)
    batch = {"image": jnp.asarray(X), "label": jnp.asarray(Y)}
    state = {"margins": jnp.asarray(eps)}
    value, out = jax.jit(loss_fn)(params, stats, batch, state, jax.random.key(0))
    return float(value), {**out.metrics, "margins": out.state["margins"]}


def test_loss_and_margins_match_algorithms_1_and_2():
    correct = (Z > 0) == Y
    assert correct.tolist() == [True, True, False, True, True]
    # Margins: examples 0 and 3 can cross (radius 1.5x their distance); 1 and 4 cannot.
    eps = np.where([True, False, True, True, False], 1.5 * DIST, 0.5 * DIST).astype(np.float32)
    crossed = correct & (eps > DIST)
    value, metrics = ima_loss(eps)
    l01 = bce(Z, Y).sum()
    l2 = crossed.sum() * np.log(2.0)  # boundary points: logit ~ 0
    want = (0.5 * l01 + 0.5 * l2) / len(X)
    assert value == pytest.approx(want, abs=2e-3)
    new = np.asarray(metrics["margins"])
    expect = np.where(crossed, DIST, eps + 0.01)
    expect[~correct] = 0.01
    np.testing.assert_allclose(new, expect, rtol=1e-2, atol=1e-4)
    assert float(metrics["crossed"]) == pytest.approx(crossed.mean())


@pytest.mark.parametrize("scale", [0.5, 1.5])
def test_no_nan_when_nothing_or_everything_crosses(scale):
    value, metrics = ima_loss((scale * DIST).astype(np.float32))
    assert np.isfinite(value)
    assert np.all(np.isfinite(np.asarray(metrics["margins"])))


def test_no_nan_when_no_sample_is_correct():
    global Y
    saved = Y
    try:
        Y = (Z <= 0).astype(np.int32)  # every example misclassified
        value, metrics = ima_loss(np.full(5, 0.5, np.float32))
        assert np.isfinite(value)
        assert value == pytest.approx(0.5 * bce(Z, Y).sum() / 5, rel=1e-5)
        np.testing.assert_allclose(metrics["margins"], 0.01)
    finally:
        Y = saved


def test_beta_zero_is_clean_loss_mean():
    value, _ = ima_loss((1.5 * DIST).astype(np.float32), beta=0.0)
    assert value == pytest.approx(bce(Z, Y).mean(), rel=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_repeated_margin_updates_converge_to_the_analytic_distance(norm):
    # Fixed linear model, random start on: a crossing found from a random start is
    # farther than the nearest boundary point, but each update shrinks the margin to
    # the found distance and the next search starts inside that smaller ball, so the
    # margins fall towards the analytic distance (and grow by delta when they
    # undershoot).
    from arjax import attacks

    model, params, stats = linear_model(W, B)
    f = model.logits_fn(params, stats)
    x, y = jnp.asarray(X), jnp.asarray((Z > 0).astype(np.int32))  # all correct
    dual = np.abs(W).sum() if norm == "linf" else np.linalg.norm(W)
    dist = np.abs(Z) / dual
    delta = 0.002
    eps = jnp.full((5,), 2.0)

    @jax.jit
    def round_(eps, key):
        found = attacks.bpgd(f, x, y, key, eps=eps, norm=norm, bounds=None)
        correct = jnp.ones(5, bool)
        return margins.update(eps, correct, found.crossed, found.distance, delta=delta, eps_max=2.0)

    for i in range(60):
        eps = round_(eps, jax.random.key(i))
    np.testing.assert_allclose(np.asarray(eps), dist, rtol=0.02, atol=2 * delta)


class _NormedLinear(nnx.Module):
    """BatchNorm then one binary logit: train- and eval-mode logits differ."""

    def __init__(self):
        self.norm = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
        self.head = nnx.Linear(2, 1, rngs=nnx.Rngs(0))

    def __call__(self, x):
        h = self.norm(x)
        return self.head(h)[:, 0], h  # (logits, features), as arjax models return


@pytest.mark.parametrize("with_batch_stats", [False, True])
def test_bpgd_reuses_the_clean_forward_only_in_the_attacks_mode(monkeypatch, with_batch_stats):
    model, params, stats = split_model(_NormedLinear()) if with_batch_stats else linear_model(W, B)
    seen = []

    def spy(f, x, y, key, **kw):
        seen.append(kw["clean_logits"])
        if kw["clean_logits"] is not None:  # they must be the attack's own logits at x
            np.testing.assert_allclose(kw["clean_logits"], f(x), rtol=1e-6)
        return real_bpgd(f, x, y, key, **kw)

    real_bpgd = attacks.bpgd
    monkeypatch.setattr(attacks, "bpgd", spy)
    cfg = method_config("ima", eps_max=1.0, delta=0.01)
    loss_fn = methods.make_loss(cfg, model, None)
    state = {"margins": jnp.full((len(X),), 0.2)}
    batch = {"image": jnp.asarray(X), "label": jnp.asarray(Y)}
    value, _ = loss_fn(params, stats, batch, state, jax.random.key(0))  # eager: concrete values
    assert np.isfinite(float(value))
    assert (seen[0] is None) == with_batch_stats
