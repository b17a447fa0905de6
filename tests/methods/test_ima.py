"""IMA (Ma et al., Algorithms 1-3): the loss and margin update against the equations on a
linear classifier, the margins reaching the analytic distance to the boundary (per batch
and in the pass after each epoch), and Alg. 2's update rules and table statistics
(``arjax.margins``)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import linear_model, preempt_after_save, tiny_config

from arjax import attacks, margins, methods, parallel
from arjax.config_lib import ConfigError
from arjax.experiment import train as loop
from arjax.experiment.presets import base_config, method_config
from arjax.models import split_model
from arjax.training.state import create_train_state
from arjax.training.state_pass import StatePass

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


D, N, BATCH = 784, 60, 32  # 60 = one full batch and one with 4 padding rows
BOUNDS = (0.0, 1.0)
# norm -> (analytic margin d of every sample, eps_max, delta). With a fixed model and the
# default side="middle", Alg. 2 settles into d, d + delta, d, ... (the midpoint lies a hair
# inside the boundary, so the next ball of radius d just misses it and expands by delta):
# delta = d / 12.5 keeps that within 10 % (the paper's delta = eps_max / epochs is 0.01 for
# 30 epochs; here 75), and growing from delta to d takes 12 updates.
SETTINGS = {"linf": (0.05, 0.3, 0.004), "l2": (1.0, 3.0, 0.08)}


def _problem(norm):
    """``(w, x [N, D], y [N])`` with every sample at the analytic margin of ``norm``."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=D)
    margin = SETTINGS[norm][0]
    dual = np.abs(w).sum() if norm == "linf" else np.linalg.norm(w)
    target = np.where(np.arange(N) % 2 == 0, 1.0, -1.0) * margin * dual  # w.x, both classes
    x0 = rng.uniform(0.35, 0.65, size=(N, D))
    x = x0 - ((x0 @ w - target) / (w @ w))[:, None] * w[None, :]
    assert 0.1 < x.min() and x.max() < 0.9  # the nearest boundary point is inside [0, 1]
    return w.astype(np.float32), x.astype(np.float32), (target > 0).astype(np.int32)


def _method(norm, **fields):
    _, eps_max, delta = SETTINGS[norm]
    return methods.IMA(norm=norm, eps_max=eps_max, delta=delta, **fields)


def _start(norm):
    """Half the table at Δε (must grow), half at ε_max (must shrink)."""
    _, eps_max, delta = SETTINGS[norm]
    return np.where(np.arange(N) % 4 < 2, delta, eps_max).astype(np.float32)


def _batch_updates(norm, updates, **fields):
    """The margins after ``updates`` calls of the IMA training loss (margin_update="batch")."""
    w, x, y = _problem(norm)
    model, params, stats = linear_model(w, 0.0)
    loss_fn = jax.jit(
        methods.make_loss(_method(norm, margin_update="batch", **fields), model, BOUNDS)
    )
    state = {"margins": jnp.asarray(_start(norm))}
    batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
    for i in range(updates):
        _, out = loss_fn(params, stats, batch, state, jax.random.key(i))
        state = out.state
    return np.asarray(state["margins"])


def _epoch_passes(norm, passes, num_devices=0, batches_per_call=2):
    """The margins after ``passes`` epoch-end passes (margin_update="epoch", the default)."""
    w, x, y = _problem(norm)
    model, params, stats = linear_model(w, 0.0)
    method = _method(norm)
    assert method.margin_update == "epoch" and method.refreshes_state
    mesh = parallel.make_mesh(num_devices)
    refresh = functools.partial(method.refresh_state, methods.Context(model, BOUNDS))
    split = {"image": x, "label": y}
    margin_pass = StatePass(
        refresh,
        split,
        batch_size=BATCH,
        mesh=mesh,
        steps_per_epoch=1,
        batches_per_call=batches_per_call,
    )
    table = {"margins": jnp.asarray(_start(norm))}
    state = create_train_state(params, stats, optax.sgd(0.0), 0, table)
    state = parallel.put_replicated(state, mesh)
    for _ in range(passes):
        state = margin_pass.run(state)
        state = state.replace(step=state.step + 1)  # a new epoch: fresh random starts
    return np.asarray(state.method_state["margins"])


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("timing", ["batch", "epoch"])
def test_default_margins_reach_the_analytic_distance_in_784d(norm, timing):
    margin = SETTINGS[norm][0]
    got = _batch_updates(norm, 30) if timing == "batch" else _epoch_passes(norm, 30)
    np.testing.assert_allclose(got, margin, rtol=0.1)
    # never below the distance (bisection resolution aside), at most one delta above it
    # (l2: the last PGD iterate of a random start is ~0.1 % off the nearest direction)
    delta = SETTINGS[norm][2]
    assert np.all(got >= margin * (1 - 1e-3)) and np.all(got <= margin * 1.005 + delta * 1.01)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_without_random_start_the_margins_reach_it_too(norm):
    margin = SETTINGS[norm][0]
    np.testing.assert_allclose(_batch_updates(norm, 30, random_start=False), margin, rtol=0.1)


def test_the_literal_recorded_bracket_cannot_shrink_from_a_random_start():
    # The documented consequence of bracket="recorded": in 784-D the random start is
    # already ~eps from x in l-inf, so the boundary point between two iterates is ~eps
    # away and a margin above the distance (0.05) never comes down to it.
    got = _batch_updates("linf", 20, bracket="recorded")
    shrink = _start("linf") > 0.1
    assert np.all(got[shrink] > 4 * SETTINGS["linf"][0])
    np.testing.assert_allclose(got[~shrink], 0.05, rtol=0.1)  # from below it does get there


def test_epoch_timing_leaves_the_table_to_the_pass():
    w, x, y = _problem("linf")
    model, params, stats = linear_model(w, 0.0)
    loss_fn = jax.jit(methods.make_loss(_method("linf"), model, BOUNDS))
    eps = jnp.asarray(_start("linf"))
    batch = {"image": jnp.asarray(x), "label": jnp.asarray(y)}
    _, out = loss_fn(params, stats, batch, {"margins": eps}, jax.random.key(0))
    np.testing.assert_array_equal(out.state["margins"], eps)
    assert not _method("linf", margin_update="batch").refreshes_state
    assert not methods.TRADES().refreshes_state


def test_one_pass_updates_every_row_and_padding_writes_nothing():
    # One pass of Algorithm 2: grown by delta where the margin is below the distance,
    # set to the distance above it; the padding rows of the last batch repeat example 0's
    # index and must not overwrite the value its real row got.
    got = _epoch_passes("linf", 1)
    start = _start("linf")
    want = np.where(start < 0.05, start + 0.004, 0.05)
    np.testing.assert_allclose(got, want, rtol=0.02)
    assert start[0] < 0.05 and got[0] == pytest.approx(0.008, rel=1e-6)


def test_the_pass_on_eight_devices_equals_one_device():
    # and both batches in one scanned call equal one call per batch
    eight, one = _epoch_passes("l2", 3), _epoch_passes("l2", 3, num_devices=1, batches_per_call=1)
    assert np.mean(eight != _start("l2")) > 0.9
    np.testing.assert_allclose(eight, one, rtol=1e-4)


@pytest.mark.parametrize("field,value", [("margin_update", "sometimes"), ("bracket", "last")])
def test_bad_timing_or_bracket_names_the_field_and_choices(field, value):
    cfg = base_config()
    cfg.method = method_config("ima", **{field: value})
    with pytest.raises(ConfigError, match=rf"method\.{field}.*{value}"):
        methods.from_config(cfg.method, num_epochs=10)
    with pytest.raises(ConfigError) as info:
        methods.from_config(cfg.method, num_epochs=10)
    valid = ("epoch", "batch") if field == "margin_update" else ("clean_to_last_wrong", "recorded")
    assert all(v in str(info.value) for v in valid)


def test_epoch_timing_resumes_to_the_same_result(tmp_path, monkeypatch):
    # 512 examples / batch 64: a pass after steps 8, 16, 24, 32. Calls of 5 steps and a
    # checkpoint at step 12 (mid-epoch): the resumed run must redo nothing and skip nothing.
    cfg = tiny_config(steps_per_call=5, checkpoint_every=12, eval_every=0)
    cfg.method = method_config("ima", num_steps=5, num_bisections=4)
    cfg.model.num_outputs = 2
    passes = []
    original = StatePass.run

    def counted(self, state):
        passes.append(int(state.step))
        return original(self, state)

    monkeypatch.setattr(StatePass, "run", counted)
    straight = loop.run(cfg, str(tmp_path / "a"), progress=False)
    assert passes == [8, 16, 24, 32]

    preempt_after_save(monkeypatch)
    assert loop.run(cfg, str(tmp_path / "b"), progress=False) is None
    monkeypatch.undo()
    resumed = loop.run(cfg, str(tmp_path / "b"), progress=False)
    a = {k: v["mean"] for k, v in straight["summary"].items()}
    b = {k: v["mean"] for k, v in resumed["summary"].items()}
    assert a.keys() == b.keys() and "margins/median" in a
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key


DELTA, EPS_MAX = 0.01, 0.3


def test_each_rule_of_algorithm_2():
    current = jnp.array([0.10, 0.10, 0.10, 0.295, 0.05, 0.10])
    correct = jnp.array([False, True, True, True, True, True])
    crossed = jnp.array([True, True, False, False, True, True])
    distance = jnp.array([0.02, 0.04, 0.0, 0.0, 0.001, 0.5])
    new = margins.update(current, correct, crossed, distance, delta=DELTA, eps_max=EPS_MAX)
    want = [
        DELTA,  # misclassified -> re-initialise to delta (even though "crossed")
        0.04,  # crossed -> distance (shrink)
        0.11,  # not crossed -> expand by delta
        EPS_MAX,  # expansion clipped at eps_max
        DELTA,  # distance below delta clipped up to delta
        EPS_MAX,  # distance above eps_max clipped down
    ]
    np.testing.assert_allclose(new, want, rtol=1e-6)


def test_code_options_running_average_and_no_reset():
    current = jnp.array([0.10, 0.10, 0.10])
    correct = jnp.array([False, True, True])
    crossed = jnp.array([False, True, False])
    distance = jnp.array([0.0, 0.04, 0.0])
    new = margins.update(
        current,
        correct,
        crossed,
        distance,
        delta=DELTA,
        eps_max=EPS_MAX,
        momentum=0.5,
        reset_misclassified=False,
    )
    np.testing.assert_allclose(new, [0.10, 0.07, 0.105], rtol=1e-6)


def test_repeated_updates_stay_in_range():
    rng = np.random.default_rng(0)
    table = jnp.full((50,), DELTA, jnp.float32)
    for _ in range(40):
        index = jnp.asarray(rng.choice(50, 10, replace=False))
        cur = table[index]
        new = margins.update(
            cur,
            jnp.asarray(rng.random(10) > 0.2),
            jnp.asarray(rng.random(10) > 0.5),
            jnp.asarray(rng.random(10) * 0.6),
            delta=DELTA,
            eps_max=EPS_MAX,
        )
        table = table.at[index].set(new)
    t = np.asarray(table)
    assert t.min() >= DELTA - 1e-7 and t.max() <= EPS_MAX + 1e-7


def test_statistics_and_suggested_eps():
    values = np.array([0.01] * 2 + [0.1] * 5 + [0.3] * 3)
    s = margins.statistics(values, delta=0.01, eps_max=0.3)
    assert s["median"] == s["suggested_eps"] == 0.1
    assert s["fraction_at_floor"] == 0.2
    assert s["fraction_at_eps_max"] == 0.3
