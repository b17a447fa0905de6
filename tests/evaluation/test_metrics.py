"""Metrics against sklearn / scipy: accuracy, ROC-AUC, Mann-Whitney U, Youden's J, aggregates."""

import math

import numpy as np
import pytest
import scipy.stats
import sklearn.metrics

from arjax.evaluation import (
    accuracy,
    mann_whitney_u,
    mean_std,
    roc_auc,
    roc_auc_per_class,
    sensitivity_specificity,
    suite,
    youden_threshold,
)
from arjax.evaluation.metrics import aggregate, binary_scores, format_mean_std

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
