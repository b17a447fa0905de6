"""Robustness from minimal distances: hand values, conventions, the curve against a strong
fixed-radius attack, and the figures."""

import json

import jax
import numpy as np
import pytest
from attack_models import data, labels, model

from arjax import attacks
from arjax.evaluation import distance_plots, distances
from arjax.evaluation.attack_curve import attack_predictions
from arjax.evaluation.report import write_json
from arjax.evaluation.robustness import RobustCurve

D_HAND = np.array([0.0, 0.1, 0.2, 0.2, np.inf])


def test_accuracy_from_distances_by_hand():
    acc = distances.robust_accuracy_from_distances(D_HAND, [0.0, 0.1, 0.15, 0.2, 1.0])
    # robust at eps iff d > eps: an adversarial at distance eps is inside the closed ball
    np.testing.assert_allclose(acc, [0.8, 0.6, 0.6, 0.2, 0.2])
    curve = distances.distance_curve(D_HAND, (0.2, 0.0, 0.1), "l2", attack="fab")
    assert isinstance(curve, RobustCurve) and curve.eps == (0.2, 0.0, 0.1)
    np.testing.assert_allclose(curve.accuracy, [0.2, 0.8, 0.6])
    np.testing.assert_allclose(curve.per_loss["fab"], curve.accuracy)
    assert curve.clean_accuracy == pytest.approx(0.8) and curve.norm == "l2"
    eps, acc = distances.survival_steps(D_HAND, eps_max=0.3)
    np.testing.assert_allclose(eps, [0.0, 0.1, 0.2, 0.3])
    np.testing.assert_allclose(acc, [0.8, 0.6, 0.2, 0.2])


def test_summary_quantiles_are_observed_distances(tmp_path):
    summary = distances.distance_summary(D_HAND, "linf", quantiles=(0.2, 0.5, 1.0))
    assert summary["n"] == 5 and summary["norm"] == "linf"
    assert summary["clean_accuracy"] == pytest.approx(0.8)
    assert summary["never_broken"] == pytest.approx(0.2)
    assert summary["median"] == pytest.approx(0.2)
    assert summary["quantiles"] == {"0.2": 0.0, "0.5": 0.2, "1": np.inf}
    assert summary["mean_broken"] == pytest.approx(0.5 / 3)
    path = write_json(tmp_path / "s.json", summary)
    assert json.loads(path.read_text())["quantiles"]["1"] == np.inf
    none_broken = distances.distance_summary(np.full(3, np.inf), "l2")
    assert none_broken["mean_broken"] is None and none_broken["median"] == np.inf


@pytest.mark.parametrize("bad", [[np.nan, 1.0], [-0.1], [[0.1]], []])
def test_bad_distances_are_refused(bad):
    with pytest.raises(ValueError, match="distances must"):
        distances.robust_accuracy_from_distances(bad, [0.1])


@pytest.mark.parametrize(
    ("norm", "grid"),
    [("l2", (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)), ("linf", (0.0, 0.02, 0.05, 0.1, 0.15, 0.2))],
)
def test_curve_from_distances_matches_a_strong_fixed_radius_attack(norm, grid):
    """One FAB / FMN run vs APGD-CE run at every radius, on a small nonlinear model.

    Both are upper bounds on the true robust accuracy. Measured on these 64 points: FAB
    (30 iterations, 1 run) is within 2/64 of APGD-CE (30 iterations) at every radius and
    within 1/64 with 50 iterations and 3 restarts; FMN (100 steps, a little weaker here)
    within 2/64.
    """
    f, x = model("softmax3"), data(5, n=64)
    y = labels("softmax3", x)
    fixed = attack_predictions(f, x, y, jax.random.PRNGKey(1),
                               attacks.parse_attack(f"apgd-ce:{norm}:0:30", default_steps=30),
                               eps=grid).correct.mean(axis=1)  # fmt: skip
    for text, tol in ((f"fab:{norm}:0:30", 2 / 64), (f"fmn:{norm}:0:100", 3 / 64)):
        spec = attacks.parse_attack(text, default_steps=30)
        found = jax.jit(lambda x, y, s=spec: attacks.minimum_norm(s, f, x, y))(x, y)
        curve = distances.distance_curve(np.asarray(found.min_distance()), grid, norm)
        print(text, np.round(curve.accuracy, 3), "apgd", np.round(fixed, 3))
        np.testing.assert_allclose(curve.accuracy, fixed, atol=tol + 1e-9, err_msg=text)
        assert curve.accuracy[0] == pytest.approx(fixed[0])  # clean accuracy, exactly
        assert np.all(np.diff(curve.accuracy) <= 0)  # monotone by construction


def test_figures(tmp_path):
    rng = np.random.default_rng(0)
    d = np.concatenate([[0.0, 0.0], rng.gamma(2.0, 0.05, size=40), [np.inf] * 3])
    grid = (0.0, 0.05, 0.1, 0.2)
    fixed = RobustCurve(grid, distances.robust_accuracy_from_distances(d, grid) + 0.02, {},
                        0.95, "l2")  # fmt: skip
    hist = distance_plots.plot_distance_histogram(d, tmp_path / "h.png", norm="l2", title="t")
    both = distance_plots.plot_curves_with_distances(
        {"apgd-ce": fixed, "pgd": (grid, [0.9, 0.8, 0.6, 0.3])}, {"fab": d}, tmp_path / "c.png"
    )
    only = distance_plots.plot_curves_with_distances({}, {"fab": d}, tmp_path / "o.png")
    for path in (hist, both, only):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
