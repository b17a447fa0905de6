"""Robust accuracy curves (worst case over losses), their executables, attack specs."""

import gc
import json
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.tree_util import Partial

from arjax import attacks
from arjax.config_lib import ConfigError
from arjax.evaluation import (
    RobustCurve,
    adversarial_examples,
    attack_specs,
    robust_accuracy,
    robust_predictions,
    roc_auc,
)
from arjax.evaluation.metrics import binary_scores

# ------------------------------------------------------------------ robust accuracy


def _linear_problem(n=24, d=5, seed=0):
    """Logits x @ W + b; the distance to the boundary is analytic."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, 2)).astype(np.float32)
    b = rng.normal(size=2).astype(np.float32)
    x = rng.normal(size=(n, d)).astype(np.float32)
    z = x @ w + b
    y = z.argmax(1)
    y[:5] = 1 - y[:5]  # five misclassified examples: clean accuracy 19/24
    v = w[:, 1] - w[:, 0]
    gap = np.abs(z[:, 1] - z[:, 0])
    dist = {"linf": gap / np.abs(v).sum(), "l2": gap / np.linalg.norm(v)}
    return x, y.astype(np.int32), jnp.asarray(w), jnp.asarray(b), dist


def _linear(w, b, x):
    return x @ w + b


def _mlp(w1, w2, x):
    return jnp.tanh(x @ w1) @ w2


def _mlp_problem(n=20, seed=1):
    """A 3-class tanh MLP as a Partial (its weights are jit arguments) and data in [0, 1]."""
    rng = np.random.default_rng(seed)
    w1 = jnp.asarray(rng.normal(size=(4, 16)).astype(np.float32))
    w2 = jnp.asarray(rng.normal(size=(16, 3)).astype(np.float32))
    fn = Partial(_mlp, w1, w2)
    x = rng.random((n, 4)).astype(np.float32)
    y = np.asarray(fn(x)).argmax(1).astype(np.int32)
    y[:3] = (y[:3] + 1) % 3
    return fn, x, y


STEPS = 10  # one attack configuration shared by most tests, so executables are reused


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_model_robust_accuracy_is_analytic(norm):
    x, y, w, b, dist = _linear_problem()
    fn = Partial(_linear, w, b)
    d = dist[norm]
    lo, hi = 0.9 * d.min(), 1.1 * d.max()
    kw = dict(num_steps=STEPS, norm=norm, bounds=None)
    curve = robust_accuracy(fn, x, y, jax.random.key(0), eps=(0.0, lo, hi), **kw)
    clean = 19 / 24
    assert curve.clean_accuracy == pytest.approx(clean)
    np.testing.assert_allclose(curve.accuracy, [clean, clean, 0.0], atol=1e-12)
    for loss in ("ce", "margin"):
        np.testing.assert_allclose(curve.per_loss[loss], [clean, clean, 0.0], atol=1e-12)
    assert curve.norm == norm and 0.0 < curve.area() < clean
    # in between: exactly the correct samples farther than eps survive
    mid = float(np.median(d))
    preds = robust_predictions(fn, x, y, jax.random.key(1), eps=(mid,), **kw)
    correct = (x @ np.asarray(w) + np.asarray(b)).argmax(1) == y
    assert 0 < preds.correct.sum() < correct.sum()
    np.testing.assert_array_equal(preds.correct[0], correct & (d > mid))


class _Params:
    """Stands for the parameter arrays a logits closure captures."""

    def __init__(self, args):
        self.args = args


def _closure(params):
    return lambda z: _mlp(*params.args, z)


def test_worst_case_is_below_each_loss_and_clean():
    fn, x, y = _mlp_problem()
    params = _Params(fn.args)
    alive = weakref.ref(params)
    closure = _closure(params)  # the plain-closure path
    preds = robust_predictions(
        closure,
        x,
        y,
        jax.random.key(3),
        eps=(0.0, 0.05, 0.15, 0.3),
        num_steps=STEPS,
        losses=("ce", "margin", "kl"),
    )
    del closure, params
    gc.collect()
    assert alive() is None  # nothing keeps the closure (and its arrays) after the call
    curve = preds.curve()
    assert curve.accuracy[0] == curve.clean_accuracy == pytest.approx(17 / 20)
    for loss, acc in curve.per_loss.items():
        assert np.all(curve.accuracy <= acc), loss
        assert np.all(acc <= curve.clean_accuracy), loss
        assert np.all(preds.correct <= preds.per_loss[loss])
        assert np.all(preds.per_loss[loss] <= preds.clean[None])
    want = preds.per_loss["ce"] & preds.per_loss["margin"] & preds.per_loss["kl"]
    np.testing.assert_array_equal(preds.correct, want)
    assert curve.accuracy[-1] < curve.accuracy[1]  # the attack bites at larger radii
    mask = np.arange(20) % 2 == 0  # masks: accuracy over the selected samples only
    np.testing.assert_allclose(preds.curve(mask).accuracy, preds.correct[:, mask].mean(1))


def test_eps_is_traced_and_chunks_reuse_one_executable():
    _, x, y = _mlp_problem()
    calls = {"n": 0}

    def counting(w1, w2, z):
        calls["n"] += 1  # python runs only while tracing
        return _mlp(w1, w2, z)

    def traces(eps, batch_size):
        calls["n"] = 0
        fn = Partial(counting, *_mlp_problem()[0].args)
        robust_accuracy(
            fn,
            x,
            y,
            jax.random.key(0),
            eps=eps,
            num_steps=STEPS,
            losses=("ce",),
            batch_size=batch_size,
        )
        return calls["n"]

    single_chunk = traces((0.05,), 512)
    assert single_chunk > 0
    assert traces((0.05,), 7) == single_chunk  # 3 chunks of 7 (last padded): no extra trace
    assert traces((0.0, 0.05, 0.1, 0.2), 7) == 0  # new radii: no retrace at all


def test_partial_logits_fn_reuses_compilation_across_parameters():
    x, y, w, b, dist = _linear_problem()
    calls = {"n": 0}

    def forward(w, b, z):
        calls["n"] += 1
        return _linear(w, b, z)

    kw = dict(eps=(0.0, 0.9 * dist["linf"].min()), num_steps=STEPS, bounds=None, losses=("ce",))
    c1 = robust_accuracy(Partial(forward, w, b), x, y, jax.random.key(0), **kw)
    first = calls["n"]
    c2 = robust_accuracy(Partial(forward, w * 2.0, b * 2.0), x, y, jax.random.key(0), **kw)
    assert first > 0 and calls["n"] == first  # new parameter arrays, no retrace
    np.testing.assert_array_equal(c1.accuracy, c2.accuracy)  # scaling keeps the boundary


def test_chunk_padding_does_not_change_results():
    fn, x, y = _mlp_problem()
    kw = dict(eps=(0.0, 0.05, 0.15, 0.3), num_steps=STEPS, random_start=False, losses=("margin",))
    a = robust_predictions(fn, x, y, jax.random.key(0), batch_size=7, **kw)
    b = robust_predictions(fn, x, y, jax.random.key(0), batch_size=512, **kw)
    assert 0 < a.correct[-1].sum() < a.clean.sum()  # a radius where some samples flip
    np.testing.assert_array_equal(a.correct, b.correct)
    np.testing.assert_array_equal(a.curve().accuracy, b.curve().accuracy)
    # random starts: the same key and chunks reproduce the same result
    x, y, w, b_, dist = _linear_problem()
    eps = (0.0, 0.9 * dist["l2"].min(), float(np.median(dist["l2"])))
    kw = dict(eps=eps, num_steps=STEPS, norm="l2", bounds=None)
    runs = [
        robust_predictions(Partial(_linear, w, b_), x, y, jax.random.key(5), **kw) for _ in range(2)
    ]
    np.testing.assert_array_equal(runs[0].correct, runs[1].correct)


def test_sharded_inputs_give_the_same_curve():
    fn, x, y = _mlp_problem(n=24)
    mesh = Mesh(np.asarray(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    xs, ys = jax.device_put(x, sharding), jax.device_put(y, sharding)
    kw = dict(eps=(0.0, 0.1, 0.3), num_steps=STEPS, random_start=False, batch_size=7)
    kw.update(losses=("margin",))
    a = robust_accuracy(fn, xs, ys, jax.random.key(0), **kw)
    b = robust_accuracy(fn, x, y, jax.random.key(0), **kw)
    assert a.accuracy[-1] < a.clean_accuracy
    np.testing.assert_array_equal(a.accuracy, b.accuracy)


def test_robust_accuracy_rejects_bad_arguments():
    fn, x, y = _mlp_problem()
    with pytest.raises(ValueError, match="linf"):
        robust_accuracy(fn, x, y, jax.random.key(0), norm="l3")
    with pytest.raises(ValueError, match="margin"):
        robust_accuracy(fn, x, y, jax.random.key(0), losses=("hinge",))
    with pytest.raises(ValueError, match="eps"):
        robust_accuracy(fn, x, y, jax.random.key(0), eps=(-0.1,))
    with pytest.raises(ValueError, match="fgsm"):
        adversarial_examples(fn, x, y, attack="cw", eps=0.1)


def test_robust_curve_area_and_json():
    curve = RobustCurve(
        eps=(0.0, 0.1, 0.2),
        accuracy=np.array([1.0, 0.5, 0.0]),
        per_loss={"ce": np.array([1.0, 0.6, 0.1])},
        clean_accuracy=1.0,
        norm="linf",
    )
    assert curve.area() == pytest.approx(0.5)
    perfect = RobustCurve((0.0, 0.3), np.ones(2), {}, 1.0, "l2")
    assert perfect.area() == pytest.approx(1.0)
    d = json.loads(json.dumps(curve.to_dict()))
    back = RobustCurve.from_dict(d)
    np.testing.assert_array_equal(back.accuracy, curve.accuracy)
    assert back.area() == d["area"] == pytest.approx(0.5)


def test_adversarial_examples_pgd_and_fgsm():
    x, y, w, b, dist = _linear_problem(n=30)
    x01 = (x - x.min()) / (x.max() - x.min())  # put the points in [0, 1]
    fn = Partial(_linear, w, b)  # noqa: E731
    eps = 0.05
    adv = adversarial_examples(fn, x01, y, jax.random.key(0), eps=eps, num_steps=10, batch_size=7)
    assert adv.shape == x01.shape and adv.dtype == np.float32
    assert np.abs(adv - x01).max() <= eps + 1e-6
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    # the attack lowers the AUC of the class-1 score
    clean_auc = roc_auc(binary_scores(fn(x01)), y)
    adv_auc = roc_auc(binary_scores(fn(adv)), y)
    assert adv_auc < clean_auc
    # FGSM equals arjax.attacks.fgsm, chunked or not; per-sample eps
    f1 = adversarial_examples(fn, x01, y, attack="fgsm", eps=eps, batch_size=7)
    np.testing.assert_allclose(f1, attacks.fgsm(fn, x01, y, eps=eps), atol=1e-6)
    per = np.where(np.arange(30) < 15, 0.0, eps).astype(np.float32)
    f2 = adversarial_examples(fn, x01, y, attack="fgsm", eps=per, batch_size=8)
    np.testing.assert_array_equal(f2[:15], x01[:15])
    np.testing.assert_allclose(f2[15:], f1[15:], atol=1e-6)


def test_attack_specs_parse_legacy_and_reject_bad_entries():
    from arjax.experiment.presets import base_config

    ev = base_config().eval
    legacy = attack_specs.attack_specs(ev)
    assert [s.name for s in legacy] == ["fgsm_linf_0.2"] and legacy[0].num_steps == 1
    ev.attacks = ("pgd:l2:0.5", "pgd:linf:0.01:100", "fgsm:linf:0.01")
    specs = attack_specs.attack_specs(ev)
    assert [s.name for s in specs] == ["pgd20_l2_0.5", "pgd100_linf_0.01", "fgsm_linf_0.01"]
    assert specs[0].num_steps == ev.num_steps and specs[1].eps == 0.01
    assert attack_specs.cross_product(["fgsm"], ["linf", "l2"], [0.1], 7) == (
        "fgsm:linf:0.1:7",
        "fgsm:l2:0.1:7",
    )
    for bad, expect in [
        (("cw:linf:0.1",), r"unknown attack 'cw' in eval.attacks\[0\]; valid choices: apgd-ce,"),
        (("pgd:l3:0.1",), "unknown norm 'l3' in eval.attacks.*valid choices: linf, l2"),
        (("pgd:linf:big",), "eps 'big' in eval.attacks.*is not a number"),
        (("pgd:linf",), "is not attack:norm:eps"),
        (("fgsm:linf:0.1", "fgsm:linf:0.1:5"), "more than once"),
    ]:
        ev.attacks = bad
        with pytest.raises(ConfigError, match=expect):
            attack_specs.attack_specs(ev)
