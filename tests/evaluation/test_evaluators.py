"""Evaluators by type: clean metrics, and robust accuracy as the worst case over attacks."""

import jax
import numpy as np
import pytest
from helpers import linear_model

from arjax import parallel
from arjax.evaluation import evaluators

W, B = np.array([1.0, -1.0], np.float32), 0.0


def _split(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
    return {"image": x, "label": (x @ W + B > 0).astype(np.int32)}


def test_robust_accuracy_is_the_per_example_worst_case_and_matches_the_margin():
    # One logit x.w: an L-inf attack of radius eps flips exactly the points with
    # |x.w| / ||w||_1 < eps, so robust accuracy is known in closed form.
    model, params, stats = linear_model(W, B)
    split = _split()
    ev = evaluators.from_config(
        "v", {"type": "robust", "attacks": ("fgsm:linf:0.2", "pgd:linf:0.1:5")}, default_every=1
    )
    out = ev(model, params, stats, split, mesh=parallel.make_mesh(1), key=jax.random.key(0),
             bounds=None)  # fmt: skip
    margin = np.abs(split["image"] @ W) / np.abs(W).sum()
    assert out["clean_accuracy"] == 1.0
    assert out["fgsm_linf_0.2/accuracy"] == pytest.approx(np.mean(margin >= 0.2))
    assert out["pgd5_linf_0.1/accuracy"] == pytest.approx(np.mean(margin >= 0.1))
    assert out["accuracy"] == pytest.approx(np.mean(margin >= 0.2))  # worst over both
    assert set(ev.metric_names()) <= set(out)


def test_classification_evaluator_reports_loss_accuracy_auc():
    model, params, stats = linear_model(W, B)
    ev = evaluators.from_config(
        "v", {"type": "classification", "max_examples": 16}, default_every=3
    )
    assert ev.every == 3 and ev.split == "val"
    out = ev(model, params, stats, _split(), mesh=parallel.make_mesh(1), key=None, bounds=None)
    assert out["accuracy"] == 1.0 and out["auc"] == 1.0 and out["loss"] > 0


def test_evaluator_types_are_registered_dataclasses():
    import dataclasses

    for name, cls in evaluators.EVALUATORS.items():
        assert dataclasses.is_dataclass(cls) and cls.type == name
