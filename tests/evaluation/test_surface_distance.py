"""HD95 (arjax.evaluation.surface_distance) on hand-made masks, and in segmentation reports."""

import math

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from arjax import parallel
from arjax.evaluation import segmentation as seg_eval
from arjax.evaluation import surface_distance as sd
from arjax.models import UNet, split_model


def _mask(shape, pixels):
    m = np.zeros(shape, bool)
    for r, c in pixels:
        m[r, c] = True
    return m


def test_single_pixels_and_spacing():
    a, b = _mask((7, 7), [(1, 1)]), _mask((7, 7), [(4, 5)])
    assert sd.hausdorff_percentile(a, b) == pytest.approx(5.0)  # the 3-4-5 triangle
    c = _mask((7, 7), [(4, 1)])
    assert sd.hausdorff_percentile(a, c, spacing=(2.0, 1.0)) == pytest.approx(6.0)
    assert sd.hausdorff_percentile(a, a) == 0.0


def test_percentile_interpolates_and_ignores_a_far_outlier():
    """pred = gt's 9-pixel line + one pixel 2 rows away: d(pred -> gt) = [0] * 9 + [2].

    np.percentile's linear rule puts the 95th percentile at rank 0.95 * 9 = 8.55, i.e.
    0.55 of the way from 0 to 2 = 1.1; gt -> pred is all 0; the Hausdorff distance is 2.
    """
    gt = _mask((6, 9), [(2, c) for c in range(9)])
    pred = gt | _mask((6, 9), [(4, 0)])
    np.testing.assert_allclose(sd.directed_surface_distances(gt, pred), 0.0)
    assert sorted(sd.directed_surface_distances(pred, gt)) == [0.0] * 9 + [2.0]
    assert sd.hausdorff_percentile(pred, gt) == pytest.approx(1.1)
    assert sd.hausdorff_percentile(gt, pred) == pytest.approx(1.1)  # symmetric
    assert sd.hausdorff_percentile(pred, gt, percentile=100) == pytest.approx(2.0)


def test_surface_is_the_border_of_a_square():
    """A 3 x 3 square's surface is its 8 border pixels; shifted by one column, HD95 = 1."""
    gt = _mask((7, 7), [(r, c) for r in (1, 2, 3) for c in (1, 2, 3)])
    assert sd.mask_surface(gt).sum() == 8 and not sd.mask_surface(gt)[2, 2]
    pred = np.roll(gt, 1, axis=1)
    # pred's border: 4 pixels on gt's border (0), 4 one step away (1)
    assert sorted(sd.directed_surface_distances(pred, gt)) == [0.0] * 4 + [1.0] * 4
    assert sd.hausdorff_percentile(pred, gt) == pytest.approx(1.0)


def test_empty_mask_rules():
    empty, one = np.zeros((6, 8), bool), _mask((6, 8), [(2, 2)])
    assert sd.hausdorff_percentile(empty, empty) == 0.0
    assert sd.hausdorff_percentile(empty, one) == pytest.approx(10.0)  # the 6 x 8 diagonal
    assert sd.hausdorff_percentile(one, empty, spacing=(2, 1)) == pytest.approx(math.sqrt(208))
    assert math.isnan(sd.hausdorff_percentile(empty, empty, empty="monai"))
    assert sd.hausdorff_percentile(one, empty, empty="monai") == math.inf
    with pytest.raises(ValueError, match="valid choices"):
        sd.hausdorff_percentile(one, one, empty="zero")


def test_matches_brute_force_on_random_blobs():
    rng = np.random.default_rng(0)
    for _ in range(3):
        a, b = rng.random((2, 20, 16)) < 0.3
        pa, pb = np.argwhere(sd.mask_surface(a)), np.argwhere(sd.mask_surface(b))
        pair = np.linalg.norm(pa[:, None] - pb[None], axis=-1)
        want = max(np.percentile(pair.min(1), 95), np.percentile(pair.min(0), 95))
        assert sd.hausdorff_percentile(a, b) == pytest.approx(want)


def test_per_class_values_and_summary():
    labels = np.zeros((2, 6, 8), np.int32)
    labels[0, 1, 1] = 1
    labels[0, 4, 5] = 2
    labels[1, 2, 2] = 1  # sample 1 has no class 2 anywhere
    pred = np.zeros_like(labels)
    pred[0, 4, 1] = 1  # 3 rows from the truth
    pred[0, 4, 5] = 2  # exact
    per_class = sd.hd95_per_class(pred, labels, 3)  # sample 1 predicts nothing
    np.testing.assert_allclose(per_class, [[3.0, 0.0], [10.0, 0.0]])
    summary = sd.hd95_summary(pred, labels, 3)
    assert summary == {"hd95": pytest.approx(3.25), "hd95_per_class": [6.5, 0.0]}


def test_segmentation_report_has_hd95_in_clean_and_adversarial():
    model = UNet(2, 1, widths=(4, 8), rngs=nnx.Rngs(0))
    fns, params, stats = split_model(model)
    rng = np.random.default_rng(0)
    x = rng.random((4, 8, 8, 1)).astype(np.float32)
    y = (x[..., 0] > 0.5).astype(np.int32)
    cfg = ml_collections.ConfigDict(
        dict(adv_eps=0.5, norm="l2", num_steps=2, losses=("ce",), alpha=4.0, batch_size=4)
    )
    result, _ = seg_eval.evaluate_split(
        fns, params, stats, {"image": x, "label": y}, cfg, (0.0, 1.0), jax.random.key(0),
        parallel.make_mesh(1), curves=False, keep=2,
    )  # fmt: skip
    pred = np.asarray(fns.logits_fn(params, stats)(x)).argmax(-1)
    assert result["clean"]["hd95"] == pytest.approx(sd.hd95_summary(pred, y, 2)["hd95"])
    for section in ("clean", "adversarial"):
        assert len(result[section]["hd95_per_class"]) == 1
        assert 0.0 <= result[section]["hd95"] <= math.hypot(8, 8)
    assert result["attacks"]["pgd2_l2_0.5"]["hd95"] == result["adversarial"]["hd95"]
