"""FAB / FAB-T: exact distances on linear heads, the fixed-radius view, restarts, errors.

Tolerance on linear heads: FAB projects exactly onto the boundary, overshoots it by
``eta = 1.05`` and steps back by ``beta = 0.9``; on an affine boundary the closest
adversarial iterate it records is ``1 + (eta - 1)(...)`` times the true distance, about
1.0052 (the reference code behaves the same), so the found distance must lie in
``[d, 1.01 d]`` (and never below ``d``: every recorded point is adversarial).
"""

import jax
import linear_heads as lh
import numpy as np
import pytest
from attack_models import data, labels, model, norms

from arjax import attacks, losses
from arjax.attacks.fab import boundary_values

KEY = jax.random.PRNGKey(0)
RTOL_FAB = 0.01


def _fab(fn, x, y, **options):
    return jax.jit(lambda x, y: attacks.fab(fn, x, y, KEY, **options))(x, y)


def _check_result(res, fn, x, y, norm, bounds=(0.0, 1.0)):
    images, dist, found = map(np.asarray, res)
    np.testing.assert_allclose(dist, np.asarray(attacks.lp_norm(images - x, norm)), atol=1e-6)
    wrong = ~np.asarray(losses.predictions_correct(fn(images), y))
    np.testing.assert_array_equal(wrong, found)  # found <=> the image is adversarial
    np.testing.assert_array_equal(images[~found], x[~found])
    if bounds is not None:
        assert images.min() >= bounds[0] and images.max() <= bounds[1]
    assert np.isfinite(images).all() and np.isfinite(dist).all()


@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("bounds", [None, (0.0, 1.0)])
def test_linear_heads_exact_distance(norm, bounds):
    """|g(x)| / ||v||_q for one logit ([B] and [B, 1]), 2 and 4 classes, multi-label."""
    x = lh.points()
    for kind in lh.HEADS:
        fn, w, b = lh.head(kind)
        y = lh.labels(kind, fn(x))
        res = _fab(fn, x, y, norm=norm, num_steps=30, bounds=bounds)
        _check_result(res, fn, x, y, norm, bounds)
        true, in_box = lh.true_distances(kind, w, b, x, y, norm)
        exact = in_box if bounds is not None else np.ones_like(in_box)
        assert exact.mean() > 0.5, kind
        dist = np.asarray(res.distance)
        assert np.asarray(res.found).all(), kind
        assert np.all(dist >= true * (1 - 1e-4)), kind  # nothing closer than the optimum
        ratio = dist[exact] / true[exact]
        assert np.all(ratio <= 1 + RTOL_FAB), (kind, ratio.max())
        print(norm, bounds, kind, f"ratio {ratio.min():.5f}-{ratio.max():.5f}")


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_targeted_over_all_targets_is_the_untargeted_distance(norm):
    fn, w, b = lh.head("softmax4", seed=1)
    x = lh.points(seed=1)
    y = lh.labels("softmax4", fn(x))
    true, _ = lh.true_distances("softmax4", w, b, x, y, norm)
    all_targets = _fab(fn, x, y, norm=norm, num_steps=30, targeted=True, num_targets=3,
                       bounds=None)  # fmt: skip
    one_target = _fab(fn, x, y, norm=norm, num_steps=30, targeted=True, num_targets=1,
                      bounds=None)  # fmt: skip
    d_all, d_one = np.asarray(all_targets.distance), np.asarray(one_target.distance)
    assert np.all(d_all <= true * (1 + RTOL_FAB)) and np.all(d_all >= true * (1 - 1e-4))
    assert np.all(d_one >= d_all * (1 - 1e-6))  # one hyperplane (the top other class) only
    assert np.any(d_one > d_all * (1 + 2 * RTOL_FAB))  # ... which is not always the nearest


def test_clean_misclassified_have_distance_zero_and_restarts_only_improve():
    f, x = model("softmax3"), data(0)
    y = labels("softmax3", x)  # the first NUM_WRONG examples are misclassified
    one = _fab(f, x, y, norm="l2", num_steps=20)
    three = _fab(f, x, y, norm="l2", num_steps=20, restarts=3, eps=0.5)
    for res in (one, three):
        _check_result(res, f, x, y, "l2")
        assert np.asarray(res.found)[:2].all() and np.all(np.asarray(res.distance)[:2] == 0)
        np.testing.assert_array_equal(np.asarray(res.images)[:2], x[:2])
    # restart 0 is the single run; later ones only replace a point by a closer one
    assert np.all(np.asarray(three.distance) <= np.asarray(one.distance) + 1e-7)
    assert np.asarray(three.found).sum() >= np.asarray(one.found).sum()
    md = np.asarray(one.min_distance())
    np.testing.assert_array_equal(np.isinf(md), ~np.asarray(one.found))


@pytest.mark.parametrize("attack", ["fab", "fab-t"])
def test_registered_fixed_radius_view(attack):
    """run_attack keeps the closest adversarial exactly where it lies within eps."""
    f, x = model("softmax5"), data(1)
    y = labels("softmax5", x)
    eps = np.linspace(0.0, 0.3, len(x)).astype(np.float32)  # per-sample radii
    spec = attacks.parse_attack(f"{attack}:linf:0.3:15", default_steps=15)
    x_adv = jax.jit(lambda x, y, e: attacks.run_attack(spec, f, x, y, KEY, eps=e))(x, y, eps)
    res = jax.jit(lambda x, y, e: attacks.minimum_norm(spec, f, x, y, KEY, eps=e))(x, y, eps)
    inside = np.asarray(res.found) & (np.asarray(res.distance) <= eps)
    x_adv = np.asarray(x_adv)
    assert np.all(norms(x_adv - x, "linf") <= eps + 1e-6)
    np.testing.assert_array_equal(x_adv[inside], np.asarray(res.images)[inside])
    np.testing.assert_array_equal(x_adv[~inside], x[~inside])
    assert not attacks.ATTACKS[attack].score_calibrated
    assert 0 < inside.sum() < len(x)


def test_boundary_values_per_head():
    z = np.array([[1.0, 3.0, 2.0]], np.float32)
    np.testing.assert_allclose(boundary_values(z, np.array([1])), [[-2.0, 0.0, -1.0]])
    np.testing.assert_allclose(boundary_values(z, np.array([1]), np.array([2])), [[-1.0]])
    np.testing.assert_allclose(boundary_values(z[:, 0], np.array([0])), [[1.0]])
    multi = boundary_values(z, np.array([[1.0, 0.0, 1.0]], np.float32))
    np.testing.assert_allclose(multi, [[-1.0, 3.0, -2.0]])


def test_argument_errors():
    f, x = model("softmax3"), data(0)
    y = labels("softmax3", x)
    with pytest.raises(ValueError, match="valid choices: linf, l2, l1"):
        attacks.fab(f, x, y, norm="l0")
    with pytest.raises(ValueError, match="restarts > 1 needs a PRNG key"):
        attacks.fab(f, x, y, restarts=2)
    seg = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="classification head"):
        attacks.fab(lambda z: z, seg, np.zeros((2, 4, 4), np.int32))
    with pytest.raises(attacks.SpecError, match="valid choices: linf, l2 \\(pgd\\)"):
        attacks.parse_attack("pgd:l1:1.0", default_steps=5)


def test_image_shaped_inputs():
    """[B, H, W, C] inputs: the same distances as the flattened linear head."""
    x_flat = lh.points(n=6, seed=4)
    fn, w, b = lh.head("softmax4", seed=4)
    x = x_flat.reshape(6, 2, 2, 2)
    y = lh.labels("softmax4", fn(x_flat))
    res = _fab(lambda z: fn(z.reshape(z.shape[0], -1)), x, y, norm="l2", num_steps=20,
               bounds=None)  # fmt: skip
    true, _ = lh.true_distances("softmax4", w, b, x_flat, y, "l2")
    assert res.images.shape == x.shape
    np.testing.assert_allclose(np.asarray(res.distance), true, rtol=RTOL_FAB)
