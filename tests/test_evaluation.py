import gc
import json
import math
import os
import warnings
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import sklearn.metrics
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jax.tree_util import Partial

from arjax import attacks
from arjax.config_lib import ConfigError
from arjax.evaluation import (
    RobustCurve,
    accuracy,
    adversarial_examples,
    aggregate,
    attack_specs,
    binary_scores,
    format_mean_std,
    mann_whitney_u,
    mean_std,
    plot_accuracy_vs_eps,
    plot_decision_boundary,
    plot_histogram,
    plot_roc_curves,
    plot_training_curves,
    read_jsonl,
    robust_accuracy,
    robust_predictions,
    roc_auc,
    roc_auc_per_class,
    sensitivity_specificity,
    suite,
    write_json,
    youden_threshold,
)
from arjax.experiment import compare as comparison

# ----------------------------------------------------------------------------- metrics


def test_accuracy_matches_sklearn_with_and_without_mask():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(40, 3)).astype(np.float32)
    labels = rng.integers(0, 3, size=40)
    mask = rng.random(40) > 0.3
    pred = logits.argmax(1)
    assert accuracy(logits, labels) == pytest.approx(sklearn.metrics.accuracy_score(labels, pred))
    want = sklearn.metrics.accuracy_score(labels[mask], pred[mask])
    assert accuracy(logits, labels, mask) == pytest.approx(want)
    # one binary logit: class 1 iff logit > 0
    z = rng.normal(size=40).astype(np.float32)
    yb = rng.integers(0, 2, size=40)
    assert accuracy(z, yb) == pytest.approx(np.mean((z > 0) == yb))
    with pytest.warns(UserWarning, match="zero examples"):
        assert math.isnan(accuracy(z, yb, np.zeros(40)))


def test_binary_scores_and_roc_auc_match_sklearn():
    rng = np.random.default_rng(1)
    logits2 = rng.normal(size=(50, 2))
    s2 = binary_scores(logits2)
    p = np.exp(logits2) / np.exp(logits2).sum(1, keepdims=True)
    np.testing.assert_allclose(s2, p[:, 1], rtol=1e-12)
    z = rng.normal(size=50)
    np.testing.assert_allclose(binary_scores(z), 1 / (1 + np.exp(-z)), rtol=1e-12)
    np.testing.assert_allclose(binary_scores(z[:, None]), binary_scores(z))
    with pytest.raises(ValueError, match="binary_scores"):
        binary_scores(rng.normal(size=(5, 3)))

    y = rng.integers(0, 2, size=50)
    scores = y * 0.5 + rng.normal(size=50)
    mask = rng.random(50) > 0.4
    auc = roc_auc(scores, y)
    assert auc == pytest.approx(sklearn.metrics.roc_auc_score(y, scores))
    assert 0.5 < auc < 1.0
    want = sklearn.metrics.roc_auc_score(y[mask], scores[mask])
    assert roc_auc(scores, y, mask) == pytest.approx(want)


def test_roc_auc_single_class_is_nan_with_warning():
    with pytest.warns(UserWarning, match="only one class"):
        assert math.isnan(roc_auc(np.array([0.1, 0.7, 0.3]), np.array([1, 1, 1])))
    # the mask leaves only class 0
    with pytest.warns(UserWarning, match="only one class"):
        out = roc_auc(np.array([0.1, 0.7, 0.3]), np.array([0, 1, 0]), np.array([1, 0, 1]))
    assert math.isnan(out)
    y = np.array([[0, 1], [1, 1], [0, 1], [1, 1]])
    s = np.array([[0.1, 0.3], [0.9, 0.2], [0.2, 0.8], [0.8, 0.5]])
    with pytest.warns(UserWarning):
        per_class = roc_auc_per_class(s, y)
    assert per_class[0] == 1.0 and math.isnan(per_class[1])


def test_mean_std_aggregate_and_format():
    d = mean_std([1.0, 2.0, 3.0, 4.0])
    assert d["n"] == 4 and d["mean"] == 2.5
    assert d["std"] == pytest.approx(math.sqrt(5.0 / 3.0))  # ddof=1
    assert mean_std([0.7]) == {"mean": 0.7, "std": 0.0, "n": 1}
    assert math.isnan(mean_std([])["mean"])
    curves = mean_std([np.array([1.0, 0.5]), np.array([0.8, 0.3])])
    np.testing.assert_allclose(curves["mean"], [0.9, 0.4])
    np.testing.assert_allclose(curves["std"], [np.sqrt(0.02), np.sqrt(0.02)])

    runs = [
        {"auc": 0.9, "acc": np.float32(0.8), "method": "ce", "ok": True},
        {"auc": 0.7, "acc": np.float32(0.6)},
        {"auc": 0.8},
    ]
    agg = aggregate(runs)
    assert set(agg) == {"auc", "acc"}
    assert agg["auc"]["mean"] == pytest.approx(0.8) and agg["auc"]["std"] == pytest.approx(0.1)
    assert agg["acc"]["n"] == 2 and agg["acc"]["mean"] == pytest.approx(0.7)
    assert format_mean_std({"mean": 95.24, "std": 0.41}) == "95.2 (0.4)"
    assert format_mean_std({"mean": 0.9524, "std": 0.0041}, scale=100.0) == "95.2 (0.4)"
    assert format_mean_std(agg["auc"], digits=2) == "0.80 (0.10)"


def test_mann_whitney_u_matches_scipy():
    a, b = [1.0, 2.0, 3.0, 4.0, 5.0], [6.0, 7.0, 8.0, 9.0, 10.0]
    out = mann_whitney_u(a, b)
    assert out["statistic"] == 0.0
    assert out["pvalue"] == pytest.approx(2 / 252)  # exact two-sided, C(10, 5) = 252
    ref = scipy.stats.mannwhitneyu(b, a, alternative="two-sided")
    assert mann_whitney_u(b, a)["pvalue"] == pytest.approx(ref.pvalue)


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


# --------------------------------------------------------------------------- report


def _is_png(path):
    data = path.read_bytes()
    return len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"


def test_plots_write_png_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 2))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    predict = lambda p: 1 / (1 + np.exp(-(p[:, 0] + p[:, 1]) * 3))  # noqa: E731
    out = plot_decision_boundary(
        predict,
        x,
        y,
        tmp_path / "a" / "db.png",
        title="moons",
        x_adv=x + 0.1,
        grid_points=50,
        max_points=40,
    )
    assert _is_png(out)
    curve = RobustCurve((0.0, 0.1), np.array([0.9, 0.4]), {"ce": np.array([0.9, 0.5])}, 0.9, "linf")
    out = plot_accuracy_vs_eps(
        {"ima": curve, "ce": ([0.0, 0.1], [0.9, 0.1], [0.01, 0.02]), "adv": ([0, 0.1], [0.8, 0.5])},
        tmp_path / "b" / "acc.png",
        title="robustness",
    )
    assert _is_png(out)
    records = [
        {"step": s, "train/loss": 1.0 / (s + 1), "train/accuracy": s / 10, "lr": 0.1}
        for s in range(10)
    ] + [{"step": 10, "val/accuracy": 0.7, "val/loss": float("nan"), "note": "x"}, {"a": 1}]
    assert _is_png(plot_training_curves(records, tmp_path / "c" / "train.png"))
    assert _is_png(plot_histogram(rng.random(100), tmp_path / "hist.png", title="margins"))
    assert _is_png(plot_training_curves([], tmp_path / "empty.png"))


def test_write_json_round_trips_numpy_values(tmp_path):
    obj = {
        "f32": np.float32(0.25),
        "i64": np.int64(7),
        "arr": np.arange(6, dtype=np.int32).reshape(2, 3),
        "jax": jnp.array([0.5, 1.5]),
        "tuple": (1, 2.5),
        "nan": float("nan"),
        "curve": RobustCurve((0.0, 0.1), np.array([1.0, 0.5]), {}, 1.0, "linf"),
        "nested": {"b": np.bool_(True)},
    }
    path = write_json(tmp_path / "sub" / "report.json", obj)
    back = json.loads(path.read_text())
    assert back["f32"] == 0.25 and back["i64"] == 7
    assert back["arr"] == [[0, 1, 2], [3, 4, 5]] and back["jax"] == [0.5, 1.5]
    assert back["tuple"] == [1, 2.5] and math.isnan(back["nan"]) and back["nested"]["b"] is True
    assert back["curve"]["area"] == pytest.approx(0.75)
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temp file left
    with pytest.raises(TypeError, match="object"):
        write_json(tmp_path / "bad.json", {"x": object()})
    assert not (tmp_path / "bad.json").exists()


def test_read_jsonl_skips_blank_and_truncated_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.5}\n\n{"step": 2, "loss": 0.25}\n{"step": 3, "lo')
    with pytest.warns(UserWarning, match="truncated"):
        records = read_jsonl(path)
    assert records == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.25}]
    path.write_text('{"step": 1}\n{bad\n{"step": 3}\n')
    with pytest.raises(ValueError, match=":2:"):
        read_jsonl(path)
    path.write_text('{"step": 1}\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_jsonl(path) == [{"step": 1}]


# ------------------------------------------- operating point, attack specs, comparison


def test_per_class_auc_skips_single_valued_classes_and_names_them():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=(30, 4))
    y[:, 1] = 1  # one label value only
    y[:, 3] = 0
    s = rng.random((30, 4)) + 0.5 * y
    with pytest.warns(UserWarning, match=r"skips classes \[1, 3\]"):
        per_class = roc_auc_per_class(s, y)
    for c in (0, 2):
        assert per_class[c] == pytest.approx(sklearn.metrics.roc_auc_score(y[:, c], s[:, c]))
    assert np.isnan(per_class[[1, 3]]).all()
    logits = (3 * s - 2).astype(np.float32)  # a monotone map of the scores keeps the AUC
    with pytest.warns(UserWarning, match="skips classes"):
        m = suite.classification_metrics(logits, y.astype(np.float32), [0.5] * 4)
    assert m["auc_skipped_classes"] == [1, 3]
    assert m["auc"] == pytest.approx(np.mean(per_class[[0, 2]]), rel=1e-6)
    p = 1 / (1 + np.exp(-logits[:, 0]))
    assert m["sensitivity_per_class"][0] == pytest.approx(np.mean(p[y[:, 0] == 1] >= 0.5))
    assert math.isnan(m["specificity_per_class"][1])  # no negative example of class 1


def test_youden_threshold_and_rates_agree_with_sklearn():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, size=200)
    s = rng.normal(size=200) + 1.2 * y
    t = youden_threshold(s, y)
    fpr, tpr, thresholds = sklearn.metrics.roc_curve(y, s)
    assert (tpr - fpr).max() == pytest.approx(
        sum(sensitivity_specificity(s, y, t).values()) - 1
    )  # J at the chosen threshold is the best J on the ROC curve
    rates = sensitivity_specificity(s, y, t)
    pred = (s >= t).astype(int)
    assert rates["sensitivity"] == pytest.approx(sklearn.metrics.recall_score(y, pred))
    assert rates["specificity"] == pytest.approx(sklearn.metrics.recall_score(1 - y, 1 - pred))
    assert math.isnan(youden_threshold(s, np.ones(200)))
    assert math.isnan(sensitivity_specificity(s, np.zeros(200), 0.0)["sensitivity"])
    # classification_metrics: binary softmax logits, threshold on p(class 1)
    logits = np.stack([np.zeros(200), s], 1).astype(np.float32)
    p1 = binary_scores(logits)
    thr = suite.choose_threshold(logits, y)
    m = suite.classification_metrics(logits, y, thr)
    assert m["sensitivity"] == pytest.approx(sklearn.metrics.recall_score(y, p1 >= thr))
    assert m["auc"] == pytest.approx(sklearn.metrics.roc_auc_score(y, s), rel=1e-5)
    assert "sensitivity" not in suite.classification_metrics(logits, y)


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


def _method(name, clean, adv):
    runs = [
        {"clean/auc": c, "adversarial/auc": a, "clean/accuracy": 0.5, "adversarial/accuracy": 0.25}
        for c, a in zip(clean, adv, strict=True)
    ]
    return {"name": name, "path": f"runs/{name}", "per_run": runs}


def test_comparison_table_and_mann_whitney_match_scipy(tmp_path):
    a = _method("A", [0.70, 0.72, 0.69, 0.71, 0.68], [0.58, 0.60, 0.57, 0.59, 0.61])
    b = _method("B", [0.69, 0.70, 0.68, 0.67, 0.71], [0.67, 0.69, 0.66, 0.68, 0.70])
    c = _method("C", [0.60, 0.62], [0.50, 0.52])
    out = comparison.compare_methods([a, b, c], ["A", "B", "C"])
    assert out["metric"] == "auc"  # every run has an AUC
    row = out["rows"]["A"]
    assert row["standard"]["mean"] == pytest.approx(0.70)
    assert row["standard"]["std"] == pytest.approx(np.std([0.70, 0.72, 0.69, 0.71, 0.68], ddof=1))
    assert row["mean"]["mean"] == pytest.approx((0.70 + 0.59) / 2)  # ARFL's mean AUC
    assert [(p["a"], p["b"]) for p in out["pvalues"]] == [("A", "B"), ("A", "C"), ("B", "C")]
    for p in out["pvalues"]:
        for col in comparison.COLUMNS:
            va, vb = out["values"][p["a"]][col], out["values"][p["b"]][col]
            ref = scipy.stats.mannwhitneyu(va, vb, alternative="two-sided")
            assert p[col] == pytest.approx(ref.pvalue)
    assert out["pvalues"][0]["adversarial"] < 0.05  # B's adversarial AUCs all higher
    table = comparison.format_tables(out)
    assert "| A | 5 | 70.0 (1.6) | 59.0 (1.6) | 64.5 (" in table
    acc = comparison.compare_methods([a, b], ["A", "B"], metric="accuracy")
    assert acc["rows"]["B"]["mean"]["mean"] == pytest.approx(0.375)
    with pytest.raises(ConfigError, match="valid choices: adversarial"):
        comparison.compare_methods([a, b], ["A", "B"], attack="pgd")
    paths = comparison.write_comparison(out, str(tmp_path))
    assert all(os.path.getsize(p) > 0 for p in paths)
    with open(paths[0]) as f:
        assert json.load(f)["pvalues"][1]["b"] == "C"


def test_report_plots_leave_pyplot_and_its_backend_alone(tmp_path):
    # A notebook's inline backend must survive importing arjax, and report plots must not
    # open pyplot figures (they used to force matplotlib.use("Agg") at import time).
    import subprocess
    import sys

    import matplotlib.pyplot as plt

    code = "import matplotlib, arjax.evaluation.report; print(matplotlib.get_backend())"
    env = {**os.environ, "MPLBACKEND": "svg"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().lower() == "svg"
    before = plt.get_fignums()
    assert _is_png(plot_histogram(np.arange(10.0), tmp_path / "h.png", bins=5))
    assert plt.get_fignums() == before


def test_roc_plot_writes_png_with_a_single_valued_panel(tmp_path):
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, size=40)
    panels = {
        "class 0": {"clean": (rng.random(40) + y, y), "fgsm": (rng.random(40), y)},
        "class 1": {"clean": (rng.random(40), np.ones(40))},
    }
    path = plot_roc_curves(panels, tmp_path / "roc.png", operating_points={"class 0": {}})
    assert path.stat().st_size > 0
